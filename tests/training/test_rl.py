"""The `rl` stage (training/rl.py): the verifiable reward, the group baseline, and a policy step that
makes rewarded replies more likely and the others less."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from transformers import PreTrainedTokenizerFast  # noqa: E402

from training import examples as E  # noqa: E402
from training import modelcfg as mc  # noqa: E402
from training import problems as pb  # noqa: E402
from training import rl  # noqa: E402
from training import tokenizer as tk  # noqa: E402
from training import traces as trc  # noqa: E402
from training import train as tr  # noqa: E402

SHIPPED = ROOT / "models" / "thinkgate-arith"


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(SHIPPED))


def _reply(
    tok: PreTrainedTokenizerFast, problem: pb.Problem, answer: int, *, ended: bool = True
) -> list[int]:
    trace = trc.long_trace(problem, random.Random(0))
    text = trace.thinking + f"{tk.THINK_END}\n\nThe answer is {answer}." + (tk.IM_END if ended else "")
    return tok.encode(text, add_special_tokens=False)


def test_the_reward_is_the_answers_correctness(tok: PreTrainedTokenizerFast) -> None:
    p = pb.Problem(4758, "+", 396)
    assert rl.reward(tok, p, _reply(tok, p, 5154)) == 1.0
    assert rl.reward(tok, p, _reply(tok, p, 5155)) == 0.0
    assert rl.reward(tok, p, _reply(tok, p, 5154, ended=False)) == 0.0  # cut off by max_new: no answer
    assert rl.reward(tok, pb.Problem(12, "-", 50), _reply(tok, pb.Problem(12, "-", 50), -38)) == 1.0


def test_advantages_are_rewards_against_their_groups_mean() -> None:
    assert rl.advantages([1, 0, 0, 1, 1, 1, 1, 1], group=4) == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert rl.advantages([1, 1, 1, 0], group=2) == [0, 0, 0.5, -0.5]


def test_step_problems_skip_the_held_out_ones() -> None:
    s = rl.RLSettings(problems=64, hard_rate=1.0)
    held = frozenset(pb.sample_problem(random.Random(3), "hard") for _ in range(64))
    got = rl.problems_for_step(random.Random(3), s, held)
    assert len(got) == 64 and not set(got) & held
    assert all(len(str(max(p.a, p.b))) >= 3 for p in got)


def _logp(model: torch.nn.Module, r: rl.Rollout) -> float:
    ids = torch.tensor([r.prompt + r.reply])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return float(lp[len(r.prompt) - 1 :].sum())


@pytest.mark.slow
def test_a_policy_step_favours_the_rewarded_reply(tok: PreTrainedTokenizerFast) -> None:
    size = mc.Size(hidden=64, layers=1, heads=2, ffn=128, vision_hidden=32, vision_layers=1, vision_heads=2,
                   vision_ffn=64)  # fmt: skip
    model = tr.new_model(mc.build_config(tok, size), seed=0)
    p = pb.Problem(4758, "+", 396)
    prompt = tok.encode(
        E.prompt_text(E.Example(p, long=True, user_text="What is 4758 + 396?")), add_special_tokens=False
    )
    right = rl.Rollout(prompt, _reply(tok, p, 5154), 1.0)
    wrong = rl.Rollout(prompt, _reply(tok, p, 5155), 0.0)
    before = _logp(model, right), _logp(model, wrong)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(5):
        loss = rl.policy_loss(model, tok.pad_token_id, [right, wrong], rl.advantages([1.0, 0.0], group=2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _logp(model, right), _logp(model, wrong)
    # The replies share all but their answer's last digit, whose terms cancel in the loss: the steps
    # move the gap between them towards the right one (the shared tokens drift either way).
    assert after[0] - after[1] > before[0] - before[1] + 0.5


@pytest.mark.slow
def test_an_rl_stage_samples_scores_and_learns_on_the_shipped_model(tok: PreTrainedTokenizerFast) -> None:
    from transformers import Idefics3ForConditionalGeneration

    model = Idefics3ForConditionalGeneration.from_pretrained(str(SHIPPED), dtype=torch.float32)
    # Easy problems: the shipped (first-generation) weights know most of them (not division).
    s = rl.RLSettings(problems=4, group=4, seed=3, hard_rate=0.0, easy_rate=1.0)
    rng = random.Random(3)
    problems = rl.problems_for_step(rng, s, frozenset())
    batch = rl.rollouts(model, tok, problems, s, rng)
    assert len(batch) == 16
    end = tok.convert_tokens_to_ids(tk.IM_END)
    for k, r in enumerate(batch):
        assert r.reward == rl.reward(tok, problems[k // s.group], r.reply)
        assert r.reply[-1] == end or len(r.reply) == s.max_new
    # The shipped model is right on many sampled replies, but not all: sampling explores.
    mean = sum(r.reward for r in batch) / len(batch)
    assert 0.3 <= mean <= 1.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = rl.RLSettings(
        minutes=0.3, problems=2, group=4, seed=4, max_new=260, hard_rate=0.0, easy_rate=1.0
    )
    stats = rl.train(model, tok, settings)
    assert stats["steps"] >= 1 and 0.0 <= stats["reward_last"] <= 1.0
    moved = any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert moved == (stats["learning_steps"] > 0)


def test_sampled_evaluation_counts_every_reply(tok: PreTrainedTokenizerFast) -> None:
    from training import inproc_eval

    size = mc.Size(hidden=64, layers=1, heads=2, ffn=128, vision_hidden=32, vision_layers=1, vision_heads=2,
                   vision_ffn=64)  # fmt: skip
    model = tr.new_model(mc.build_config(tok, size), seed=0)
    cell = [("long", "text", "easy")]
    torch.manual_seed(0)
    sampled = inproc_eval.evaluate(model, tok, n=3, seed=1, cells=cell, max_new=6, samples=4, temperature=1.0)
    greedy = inproc_eval.evaluate(model, tok, n=3, seed=1, cells=cell, max_new=6, samples=4)
    assert sampled["long/text/easy"]["n"] == 12 and greedy["long/text/easy"]["n"] == 3  # greedy: one each
    replies = inproc_eval.generate(
        model, tok, inproc_eval.held_out(cell[0], 1, 1) * 6, max_new=6, temperature=1.0
    )
    assert len({text for text, *_ in replies}) > 1  # an untrained model's samples differ


@pytest.mark.slow
def test_the_in_process_evaluation_command_sums_its_seeds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import inproc_eval, render

    monkeypatch.setattr(render, "NORMALISED", render.NORMALISED)  # the command sets it: restore it after
    assert inproc_eval.main([str(SHIPPED), "--cells", "long/text/easy", "--n", "3", "--seeds", "7,99"]) == 0
    out = capsys.readouterr().out
    assert out.count("[eval] seed") == 2
    per_seed = [float(m) for m in re.findall(r"long/text/easy=(\d+)%", out)]
    row = next(line for line in out.splitlines() if line.startswith("| long | text | easy |"))
    n, pass1 = row.split("|")[4:6]
    assert int(n) == 6 and len(per_seed) == 2
    assert abs(float(pass1.strip(" %")) - sum(per_seed) / 2) < 1.0  # the table is the seeds' mean
