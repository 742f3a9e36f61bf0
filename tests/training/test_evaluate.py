"""`make eval`'s report (training/evaluate.py), without an engine."""

from __future__ import annotations

from training.evaluate import CELLS, report_text


def test_the_product_evaluations_report_has_every_row_of_its_table() -> None:
    """`make eval`'s card text, from a table shaped as the evaluation returns it (no engine: the
    rows are made up here; tests/training/test_engine.py asks the real one)."""
    row = {"n": 10, "pass1": 0.5, "reasoning_tokens": 100.0, "output_tokens": 120.0}
    table = {
        "/".join(cell): {**row, "latency_mean_s": 0.5, "latency_p50_s": 0.4, "errors": 0} for cell in CELLS
    }
    dialogues = (
        "long/text/ood",
        "short/text/ood",
        "short/text/easy, turns 2-4",
        "long/text/hard + calculator",
    )
    table.update({key: dict(row) for key in dialogues})
    text = report_text(table, "10 problems per cell")
    assert text.startswith("Run ") and "10 problems per cell." in text
    for key in [*table]:
        assert f"| {key} |" in text or "| " + " | ".join(key.split("/")) + " |" in text, key
    assert "long + calculator, hard: 50.0% with 100 reasoning tokens" in text
