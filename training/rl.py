"""The `rl` stage: reinforcement learning with the verifiable reward, the K1.5 report's RL at toy scale,
and the sampling, policy loss and stage loop that the long2short stages (training/long2short.py) share.

Each step samples a group of long-mode replies per problem at temperature 1 and rewards each 1 if its
answer's last integer is the true result, 0 if not. A reply's advantage is its reward minus its group's
mean (REINFORCE with the group as baseline, as in GRPO), so only groups with both right and wrong
replies teach anything: the right replies' tokens are made more likely and the wrong ones' less. No
reference model or KL term: the stage is short and its learning rate small, and the probes watch
that nothing else degrades.

Problems are text problems from the training split, weighted to the hard sizes, never one of the
evaluation problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import problems as pb
from training import tokenizer as tk
from training.inproc_eval import is_right, reply_ids
from training.train import StageClock, optimizer_step, progress_bar


@dataclass
class SampledSettings:
    """What every stage that learns from its own samples has (`rl`, `l2s-rs`, `l2s-rl`)."""

    minutes: float = 30.0
    lr: float = 3e-5
    warmup_s: float = 60.0
    problems: int = 8  # per step
    group: int = 4  # sampled replies per problem
    temperature: float = 1.0
    max_new: int = 400  # a hard trace is ~200 tokens; longer replies are cut and score 0
    hard_rate: float = 0.75  # share of problems from the hard split
    easy_rate: float = 0.0  # share from the easy split (the rest: the training mix)
    eval_every_s: float = 600.0
    seed: int = 1500


@dataclass
class RLSettings(SampledSettings):
    """The `rl` stage: long-mode replies, the 1/0 reward."""


@dataclass
class Rollout:
    prompt: list[int]
    reply: list[int]  # sampled ids, up to and including the end-of-turn token
    reward: float


@dataclass
class StepOutcome:
    """One step of a sampling stage: the loss to learn from (None: the samples taught nothing), the
    step's mean sampled reward and mean sampled reply length (for the progress line and the report)."""

    loss: torch.Tensor | None
    reward: float
    tokens: float


def reward(tok: PreTrainedTokenizerFast, problem: pb.Problem, reply: list[int]) -> float:
    """1.0 when the reply ends its turn and its answer's last integer is the result, else 0.0."""
    if not reply or reply[-1] != tok.convert_tokens_to_ids(tk.IM_END):
        return 0.0
    return float(is_right(problem, str(tok.decode(reply, skip_special_tokens=True))))


def advantages(rewards: list[float], group: int) -> list[float]:
    """Each reward minus its group's mean (groups are consecutive runs of ``group`` rollouts)."""
    out: list[float] = []
    for i in range(0, len(rewards), group):
        chunk = rewards[i : i + group]
        mean = sum(chunk) / len(chunk)
        out += [r - mean for r in chunk]
    return out


def problems_for_step(
    rng: random.Random, s: SampledSettings, exclude: frozenset[pb.Problem]
) -> list[pb.Problem]:
    out: list[pb.Problem] = []
    while len(out) < s.problems:
        r = rng.random()
        split = "hard" if r < s.hard_rate else "easy" if r < s.hard_rate + s.easy_rate else "train"
        p = pb.sample_problem(rng, split)
        if p not in exclude:
            out.append(p)
    return out


def rollouts(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    problems: list[pb.Problem],
    s: SampledSettings,
    rng: random.Random,
    *,
    long: bool = True,
    group: int | None = None,
    max_new: int | None = None,
) -> list[Rollout]:
    """``group`` (default ``s.group``) sampled replies to each problem in the given mode, text prompts
    in the trained forms, rewarded 1/0; a problem's replies are consecutive and share one prompt."""
    group = s.group if group is None else group
    end = tok.convert_tokens_to_ids(tk.IM_END)
    prompts = []
    for p in problems:
        ex = E.Example(p, long=long, user_text=pb.text_prompt(p, rng))
        prompts += [tok.encode(E.prompt_text(ex), add_special_tokens=False)] * group
    was_training = model.training
    model.eval()  # type: ignore[no-untyped-call]
    out = reply_ids(model, tok, prompts, s.max_new if max_new is None else max_new, s.temperature)
    model.train(was_training)
    result = []
    for k, row in enumerate(out):
        reply = row[: row.index(end) + 1] if end in row else row
        result.append(Rollout(prompts[k], reply, reward(tok, problems[k // group], reply)))
    return result


def collate(
    seqs: list[tuple[list[int], list[float]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, per-token weights, attention mask) of sequences padded on the right."""
    n = max(len(ids) for ids, _ in seqs)
    ids = torch.tensor([x + [pad_id] * (n - len(x)) for x, _ in seqs])
    weights = torch.tensor([w + [0.0] * (n - len(w)) for _, w in seqs])
    attn = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in seqs])
    return ids, weights, attn


def policy_loss(
    model: Idefics3ForConditionalGeneration, pad_id: int, batch: list[Rollout], advantage: list[float]
) -> torch.Tensor:
    """Mean over the replies' tokens of advantage × negative log-likelihood (prompts weigh nothing).
    With every advantage 1 it is the replies' cross-entropy (supervised fine-tuning on them)."""
    ids, weights, attn = collate(
        [(r.prompt + r.reply, [0.0] * len(r.prompt) + [a] * len(r.reply))
         for r, a in zip(batch, advantage, strict=True)],
        pad_id,
    )  # fmt: skip
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    n_tokens = sum(len(r.reply) for r in batch)
    return (nll * weights[:, 1:].reshape(-1)).sum() / max(n_tokens, 1)


def run_stage(
    model: Idefics3ForConditionalGeneration,
    s: SampledSettings,
    step_fn: Callable[[random.Random], StepOutcome],
    name: str,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """A sampling stage's loop until the time budget is spent (sampling included): ``step_fn`` samples
    and returns the loss, the loop warms the learning rate up and steps. Returns the stage's
    statistics, with the mean sampled reward and reply length of its first and last tenths of steps."""
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    clock = StageClock(s.eval_every_s, on_eval)
    budget = s.minutes * 60
    step, learned = 0, 0
    rewards: list[float] = []
    tokens: list[float] = []
    bar = progress_bar(budget, name)
    while (elapsed := clock.elapsed()) < budget:
        outcome = step_fn(rng)
        rewards.append(outcome.reward)
        tokens.append(outcome.tokens)
        step += 1
        if outcome.loss is not None:
            for g in opt.param_groups:
                g["lr"] = s.lr * min(1.0, max(elapsed / s.warmup_s, 0.02))
            optimizer_step(opt, outcome.loss)
            learned += 1
        recent, recent_tokens = rewards[-50:], tokens[-50:]
        bar.n = int(min(elapsed, budget))
        bar.set_postfix_str(
            f"step {step} reward {sum(recent) / len(recent):.0%} "
            f"tokens {sum(recent_tokens) / len(recent_tokens):.0f} (last 50)"
        )
        clock.probe(model, step, elapsed)
    bar.close()
    model.eval()  # type: ignore[no-untyped-call]
    tenth = max(len(rewards) // 10, 1)

    def mean(xs: list[float]) -> float:
        return sum(xs) / max(len(xs), 1)

    return {
        "steps": float(step),
        "learning_steps": float(learned),
        "seconds": clock.elapsed(),
        "reward_first": mean(rewards[:tenth]),
        "reward_last": mean(rewards[-tenth:]),
        "tokens_first": mean(tokens[:tenth]),
        "tokens_last": mean(tokens[-tenth:]),
    }


def train(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: RLSettings,
    on_eval: Callable[[int, float], None] | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> dict[str, float]:
    """The `rl` stage until its time budget is spent (see `run_stage` for the statistics)."""

    def step(rng: random.Random) -> StepOutcome:
        batch = rollouts(model, tok, problems_for_step(rng, s, exclude), s, rng)
        batch_rewards = [r.reward for r in batch]
        adv = advantages(batch_rewards, s.group)
        loss = None
        if any(adv):  # a step where every group agreed has nothing to teach
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = policy_loss(model, tok.pad_token_id, batch, adv)
        n = len(batch)
        return StepOutcome(loss, sum(batch_rewards) / n, sum(len(r.reply) for r in batch) / n)

    return run_stage(model, s, step, "rl", on_eval)
