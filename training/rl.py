"""The `rl` stage: reinforcement learning with the verifiable reward, the K1.5 report's RL at toy scale.

Each step samples a group of long-mode replies per problem at temperature 1 and rewards each 1 if its
answer's last integer is the true result, 0 if not. A reply's advantage is its reward minus its group's
mean (REINFORCE with the group as baseline, as in GRPO), so only groups with both right and wrong
replies teach anything: the right replies' tokens are made more likely and the wrong ones' less. No
reference model or KL term: the stage is short and its learning rate small, and the probes watch
that nothing else degrades.

Problems are text problems in long mode from the training split, weighted to the hard sizes, never
one of the evaluation problems.
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
class RLSettings:
    minutes: float = 30.0
    lr: float = 3e-5
    warmup_s: float = 60.0
    problems: int = 8  # per step
    group: int = 4  # sampled replies per problem
    temperature: float = 1.0
    max_new: int = 400  # a hard trace is ~200 tokens; longer replies are cut and score 0
    hard_rate: float = 0.75  # share of problems from the hard split (the rest: the training mix)
    eval_every_s: float = 600.0
    seed: int = 1500


@dataclass
class Rollout:
    prompt: list[int]
    reply: list[int]  # sampled ids, up to and including the end-of-turn token
    reward: float


def reward(tok: PreTrainedTokenizerFast, problem: pb.Problem, reply: list[int]) -> float:
    """1.0 when the reply ends its turn and its answer's last integer is the result, else 0.0."""
    if not reply or reply[-1] != tok.convert_tokens_to_ids(tk.IM_END):
        return 0.0
    return float(is_right(problem, tok.decode(reply, skip_special_tokens=True)))


def advantages(rewards: list[float], group: int) -> list[float]:
    """Each reward minus its group's mean (groups are consecutive runs of ``group`` rollouts)."""
    out: list[float] = []
    for i in range(0, len(rewards), group):
        chunk = rewards[i : i + group]
        mean = sum(chunk) / len(chunk)
        out += [r - mean for r in chunk]
    return out


def problems_for_step(rng: random.Random, s: RLSettings, exclude: frozenset[pb.Problem]) -> list[pb.Problem]:
    out: list[pb.Problem] = []
    while len(out) < s.problems:
        p = pb.sample_problem(rng, "hard" if rng.random() < s.hard_rate else "train")
        if p not in exclude:
            out.append(p)
    return out


def rollouts(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    problems: list[pb.Problem],
    s: RLSettings,
    rng: random.Random,
) -> list[Rollout]:
    """``s.group`` sampled long-mode replies to each problem (text prompts in the trained forms)."""
    end = tok.convert_tokens_to_ids(tk.IM_END)
    prompts = []
    for p in problems:
        ex = E.Example(p, long=True, user_text=pb.text_prompt(p, rng))
        prompts += [tok.encode(E.prompt_text(ex), add_special_tokens=False)] * s.group
    was_training = model.training
    model.eval()
    out = reply_ids(model, tok, prompts, s.max_new, s.temperature)
    model.train(was_training)
    result = []
    for k, row in enumerate(out):
        reply = row[: row.index(end) + 1] if end in row else row
        result.append(Rollout(prompts[k], reply, reward(tok, problems[k // s.group], reply)))
    return result


def policy_loss(
    model: Idefics3ForConditionalGeneration, pad_id: int, batch: list[Rollout], advantage: list[float]
) -> torch.Tensor:
    """Mean over the replies' tokens of advantage × negative log-likelihood (prompts weigh nothing)."""
    seqs = [r.prompt + r.reply for r in batch]
    n = max(len(x) for x in seqs)
    ids = torch.tensor([x + [pad_id] * (n - len(x)) for x in seqs])
    attn = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in seqs])
    weights = torch.tensor(
        [[0.0] * len(r.prompt) + [a] * len(r.reply) + [0.0] * (n - len(r.prompt) - len(r.reply))
         for r, a in zip(batch, advantage, strict=True)]
    )  # fmt: skip
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    n_tokens = sum(len(r.reply) for r in batch)
    return (nll * weights[:, 1:].reshape(-1)).sum() / max(n_tokens, 1)


def train(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    s: RLSettings,
    on_eval: Callable[[int, float], None] | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> dict[str, float]:
    """RL until the time budget is spent (sampling included). Returns the stage's statistics, with
    the mean sampled reward of its first and last tenths of steps."""
    rng = random.Random(s.seed)
    torch.manual_seed(s.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    clock = StageClock(s.eval_every_s, on_eval)
    budget = s.minutes * 60
    step, learned, rewards = 0, 0, []
    bar = progress_bar(budget, "rl")
    while (elapsed := clock.elapsed()) < budget:
        batch = rollouts(model, tok, problems_for_step(rng, s, exclude), s, rng)
        batch_rewards = [r.reward for r in batch]
        rewards.append(sum(batch_rewards) / len(batch_rewards))
        adv = advantages(batch_rewards, s.group)
        step += 1
        if any(adv):  # a step where every group agreed has nothing to teach
            for g in opt.param_groups:
                g["lr"] = s.lr * min(1.0, max(elapsed / s.warmup_s, 0.02))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = policy_loss(model, tok.pad_token_id, batch, adv)
            optimizer_step(opt, loss)
            learned += 1
        recent = rewards[-50:]
        bar.n = int(min(elapsed, budget))
        bar.set_postfix_str(f"step {step} reward {sum(recent) / len(recent):.0%} (last 50)")
        clock.probe(model, step, elapsed)
    bar.close()
    model.eval()
    tenth = max(len(rewards) // 10, 1)
    return {
        "steps": float(step),
        "learning_steps": float(learned),
        "seconds": clock.elapsed(),
        "reward_first": sum(rewards[:tenth]) / max(len(rewards[:tenth]), 1),
        "reward_last": sum(rewards[-tenth:]) / max(len(rewards[-tenth:]), 1),
    }
