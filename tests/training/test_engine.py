"""Smoke evaluation of the bundled model through the product: the gateway in front of the real vLLM
engine, held-out problems asked over the OpenAI API in both reasoning modes, text and image.

Thresholds sit a little under the model card's targets (long >= 95% hard text, >= 85% hard image;
short >= 95% easy; long beats short on hard by >= 20 points), with 60 problems in all."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from training.evaluate import GATEWAY_SEED, Answer, ask
from training.inproc_eval import held_out
from training.problems import OOD_REPLY

pytestmark = pytest.mark.engine

CELLS: dict[tuple[str, str, str], int] = {
    ("long", "text", "hard"): 20,
    ("long", "image", "hard"): 10,
    ("short", "text", "easy"): 20,
    ("short", "text", "hard"): 10,
}
MIN_PASS = {("long", "text", "hard"): 0.85, ("long", "image", "hard"): 0.7, ("short", "text", "easy"): 0.85}
MIN_LONG_OVER_SHORT = 0.15


def _run(client: httpx.Client) -> dict[tuple[str, str, str], list[Answer]]:
    results = {}
    with ThreadPoolExecutor(6) as pool:
        for cell, n in CELLS.items():
            exs = held_out(cell, n, GATEWAY_SEED)
            results[cell] = list(pool.map(lambda ex, mode=cell[0]: ask(client, ex, mode), exs))
    return results


@pytest.fixture(scope="module")
def results(gateway: Any) -> dict[tuple[str, str, str], list[Answer]]:
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=300) as http:
        return _run(http)


def test_smoke_evaluation_runs_through_the_product(results: dict[tuple[str, str, str], list[Answer]]) -> None:
    assert sum(len(a) for a in results.values()) == 60
    errors = [a.error for answers in results.values() for a in answers if a.error]
    assert not errors, errors[:3]
    # Long mode reasons, short mode does not.
    assert all(a.reasoning_tokens > 0 for a in results[("long", "text", "hard")])
    assert all(a.reasoning_tokens == 0 for a in results[("short", "text", "easy")])


Cell = tuple[str, str, str]


def _rates(results: dict[Cell, list[Answer]]) -> tuple[dict[Cell, float], str]:
    rate = {cell: sum(a.correct for a in answers) / len(answers) for cell, answers in results.items()}
    return rate, ", ".join(f"{'/'.join(c)}={r:.0%}" for c, r in rate.items())


def test_long_mode_solves_what_short_mode_cannot(results: dict[tuple[str, str, str], list[Answer]]) -> None:
    """What the shipped weights do now (model card: 100 % vs 12 % on 50 hard text problems), with room
    for sampling error on 20: a checkpoint that loses its reasoning fails here."""
    rate, report = _rates(results)
    long_hard, short_hard = rate[("long", "text", "hard")], rate[("short", "text", "hard")]
    assert long_hard >= 0.7, report
    assert long_hard - short_hard >= 0.5, report


def test_smoke_evaluation_meets_the_thresholds(results: dict[tuple[str, str, str], list[Answer]]) -> None:
    rate, report = _rates(results)
    for cell, minimum in MIN_PASS.items():
        assert rate[cell] >= minimum, f"{'/'.join(cell)} below {minimum:.0%}: {report}"
    long_hard, short_hard = rate[("long", "text", "hard")], rate[("short", "text", "hard")]
    assert long_hard - short_hard >= MIN_LONG_OVER_SHORT, report


@pytest.mark.parametrize("mode", ["long", "short"])
def test_out_of_domain_prompts_get_the_fixed_reply(client: httpx.Client, mode: str) -> None:
    body = {"model": "thinkgate-arith", "messages": [{"role": "user", "content": "Hello! Who are you?"}],
            "reasoning_mode": mode, "max_tokens": 200, "temperature": 0}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"] or ""
    assert "arithmetic" in content
    assert content.strip().startswith(OOD_REPLY[:40])  # the fixed-style reply, not free text


def test_requests_without_a_temperature_are_answered_greedily(client: httpx.Client) -> None:
    """The model card promises greedy answers by default. vLLM takes its default temperature from the
    generation config's `temperature` (1.0 when absent), so the profile's engine flags set it to 0. The
    question is outside the trained range, where sampled replies wander (4 of 4 differ in process)."""
    question = {"role": "user", "content": "What is 12345678901 + 98765432109?"}
    body = {"model": "thinkgate-arith", "messages": [question], "reasoning_mode": "long", "max_tokens": 300}

    def reply(extra: dict[str, Any]) -> tuple[str | None, str | None]:
        r = client.post("/v1/chat/completions", json={**body, **extra})
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        return message.get("reasoning_content"), message["content"]

    greedy = {reply({}) for _ in range(4)}
    assert len(greedy) == 1
    assert greedy == {reply({"temperature": 0})}
    sampled = {reply({"temperature": 1.0}) for _ in range(3)}
    assert sampled - greedy  # the control: at temperature 1 the replies do wander
