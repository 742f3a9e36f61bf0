"""long2short (training/long2short.py): the K1.5 length reward, the shortest-correct choice, a
fine-tuning step on the chosen reply, model merging, and the stage kinds in the recipe's parser."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from training import build, rl
from training import examples as E
from training import long2short as L
from training import modelcfg as mc
from training import problems as pb
from training import tokenizer as tk
from training import train as tr

TINY = mc.Size(hidden=64, layers=1, heads=2, ffn=128, vision_hidden=32, vision_layers=1, vision_heads=2,
               vision_ffn=64)  # fmt: skip


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "thinkgate-arith"


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(SHIPPED))


def test_the_shortest_correct_reply_gets_the_largest_reward_and_wrong_ones_none() -> None:
    correct = [True, True, False, False, True]
    lengths = [40, 70, 20, 100, 100]
    got = L.length_rewards(correct, lengths)
    # λ = 0.5 − (len − 20)/80: 0.25, −0.125, 0.5, −0.5, −0.5
    assert got == pytest.approx([1.25, 0.875, 0.0, -0.5, 0.5])
    assert max(range(5), key=got.__getitem__) == 0  # the shortest correct, not the shorter wrong one
    assert all(r <= 0 for r, ok in zip(got, correct, strict=True) if not ok)
    assert L.length_rewards(correct, lengths, weight=0.5) == pytest.approx([1.125, 0.9375, 0.0, -0.25, 0.75])


def test_a_group_of_equal_lengths_is_rewarded_on_correctness_alone() -> None:
    assert L.length_rewards([True, False, True], [33, 33, 33]) == [1.0, 0.0, 1.0]


def test_shaped_rewards_are_computed_per_group() -> None:
    batch = [rl.Rollout([0], [1] * n, r) for n, r in [(10, 1.0), (20, 1.0), (5, 0.0), (5, 0.0)]]
    # The second group's lengths are equal: its λ is 0, whatever the first group's lengths.
    assert L.shaped_rewards(batch, group=2, weight=1.0) == [1.5, 0.5, 0.0, 0.0]


def test_the_shortest_correct_candidate_is_chosen_never_a_wrong_one() -> None:
    cands = [([1, 2, 3, 4], True), ([1], False), ([5, 6], True), ([7, 8, 9], True), ([], False)]
    assert L.shortest_correct(cands) == [5, 6]
    assert L.shortest_correct([([1], False), ([1, 2], False)]) is None
    assert L.shortest_correct([([1, 2], True), ([3, 4], True)]) == [1, 2]  # the first of equals


def test_a_correct_long_reply_becomes_a_short_mode_target(tok: PreTrainedTokenizerFast) -> None:
    p = pb.Problem(4758, "+", 396)
    trace = E.tr.long_trace(p, random.Random(0))
    reply = tok.encode(
        trace.thinking + f"{tk.THINK_END}\n\n{trace.answer}{tk.IM_END}", add_special_tokens=False
    )
    solution = tok.decode(L.long_to_short(tok, p, reply, "solution"))
    assert solution == E.tr.short_solution(p) + tk.IM_END and tk.THINK_END not in solution
    assert tok.decode(L.long_to_short(tok, p, reply, "answer")) == f"The answer is 5154.{tk.IM_END}"


def _logp(model: torch.nn.Module, prompt: list[int], reply: list[int]) -> float:
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(lp[len(prompt) - 1 :].sum())


@pytest.mark.slow
def test_a_rejection_sampling_step_raises_the_chosen_replys_likelihood(tok: PreTrainedTokenizerFast) -> None:
    torch.set_num_threads(1)
    model = tr.new_model(mc.build_config(tok, TINY), seed=0)
    p = pb.Problem(4758, "+", 396)
    prompt = tok.encode(
        E.prompt_text(E.Example(p, long=False, user_text="What is 4758 + 396?")), add_special_tokens=False
    )
    chosen = L.long_to_short(tok, p, [], "solution")
    before = _logp(model, prompt, chosen)
    s = L.L2SSettings(sft_examples=2, sft_image_rate=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for k in range(5):
        item = (prompt + chosen, [0.0] * len(prompt) + [1.0] * len(chosen))
        tr.optimizer_step(opt, L.supervised_loss(model, tok, s, random.Random(k), frozenset(), [item]))
    assert _logp(model, prompt, chosen) > before + 5.0


@pytest.mark.slow
def test_merging_averages_the_weights_exactly(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    cfg = mc.build_config(tok, TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, out in ((0, a), (1, b)):
        L.write_checkpoint(tr.new_model(cfg, seed), _side_files(tok, cfg, tmp_path / f"side{seed}"), out)
    wa, wb = L.load(a).state_dict(), L.load(b).state_dict()
    merged = L.merge(a, b, 0.25)
    name = "model.text_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(wa[name], wb[name])
    for key, value in merged.items():
        assert torch.equal(value, 0.25 * wa[key] + 0.75 * wb[key]), key
    L.write_merged(a, b, 0.5, tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.json").exists() and (tmp_path / "m" / "SHA256SUMS").exists()
    reloaded = L.load(tmp_path / "m").state_dict()
    # On disk in bf16 (as every checkpoint): the average up to bf16's rounding.
    assert torch.allclose(reloaded[name], 0.5 * (wa[name] + wb[name]), atol=1e-2)


def _side_files(tok: PreTrainedTokenizerFast, cfg: object, out: Path) -> Path:
    mc.save_side_files(out, tok, cfg)  # type: ignore[arg-type]
    return out


def test_the_stage_kinds_are_accepted_with_their_settings() -> None:
    stages = build.parse_stages("l2s-rs:4:1e-4,l2s-rl:3:3e-5,rl:2:3e-5")
    assert [s.kind for s in stages] == ["l2s-rs", "l2s-rl", "rl"]
    with pytest.raises(ValueError, match="unknown stage kind"):
        build.parse_stages("l2s-dpo:4:1e-4")
    stage = build.Stage(4.0, 1e-4, "l2s-rl", train={"length_weight": 0.5, "group": 6})
    settings = build.stage_settings(stage, 11)
    assert isinstance(settings, L.L2SSettings)
    assert (settings.kind, settings.lr, settings.seed, settings.length_weight, settings.group) == (
        "l2s-rl",
        1e-4,
        11,
        0.5,
        6,
    )
    assert build.stage_settings(stage, 11, quick=True).max_new == 48  # type: ignore[union-attr]
    assert isinstance(build.stage_settings(stages[2], 1), rl.RLSettings)


def _table(long: tuple[float, float], short_hard: tuple[float, float]) -> dict[str, dict[str, float]]:
    cells = {"long/text/hard": long, "short/text/hard": short_hard, "short/text/easy": (0.9, 30.0)}
    return {key: {"n": 10, "pass1": p, "output_tokens": t} for key, (p, t) in cells.items()}


def test_the_comparison_table_reports_the_ratio_and_the_target() -> None:
    rows: list[L.Row] = [
        {"method": "base", "minutes": 0, "table": _table((0.9, 300.0), (0.5, 90.0))},
        {"method": "l2s-rs", "minutes": 8, "table": _table((0.9, 300.0), (0.65, 72.0))},
    ]
    lines = L.format_comparison(rows).splitlines()
    assert lines[2] == "| base | 0 | 90% | 300 | 50% | 90 | 90% | 30 | 30% | no |"
    assert lines[3] == "| l2s-rs | 8 | 90% | 300 | 65% | 72 | 90% | 30 | 24% | yes |"


@pytest.mark.slow
def test_the_plot_is_written(tmp_path: Path) -> None:
    rows: list[L.Row] = [{"method": "base", "minutes": 0, "table": _table((0.9, 300.0), (0.5, 90.0))}]
    L.plot(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
