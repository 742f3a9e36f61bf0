"""In-process evaluation with transformers (greedy): tracks progress during training and gives the first
table for the model card. ``training.evaluate`` is the through-the-product evaluation."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from transformers import Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import problems as pb
from training import tokenizer as tk
from training.train import make_pixel_fn

Cell = tuple[str, str, str]  # (mode, kind, split)
ALL_CELLS: list[Cell] = [
    (m, k, s) for m in ("long", "short") for k in ("text", "image") for s in ("easy", "hard")
]
PROBE_CELLS: list[Cell] = [("long", "text", "hard"), ("long", "image", "hard"), ("short", "text", "easy")]


@dataclass
class CellResult:
    n: int
    correct: int
    reasoning_tokens: float
    seconds_per_answer: float

    @property
    def pass1(self) -> float:
        return self.correct / max(self.n, 1)


def held_out(cell: Cell, n: int, seed: int) -> list[E.Example]:
    mode, kind, split = cell
    rng = random.Random(f"{seed}-{mode}-{kind}-{split}")
    return [
        E.make_example(
            rng,
            split,
            image_rate=1.0 if kind == "image" else 0.0,
            long_rate=1.0 if mode == "long" else 0.0,
            ood_rate=0.0,
        )
        for _ in range(n)
    ]


EVAL_SEEDS = (7, 99, 2026)  # probes during training, the final in-process table, the gateway evaluation


def eval_problems(n: int = 100) -> frozenset[pb.Problem]:
    """Every problem any evaluation may ask, so training can leave them out."""
    out: set[pb.Problem] = set()
    for seed in EVAL_SEEDS:
        for cell in ALL_CELLS:
            out.update(ex.problem for ex in held_out(cell, n, seed) if ex.problem is not None)
    return frozenset(out)


def split_reply(text: str) -> tuple[str, str]:
    """(reasoning, answer) from a generated reply that starts after the generation prompt."""
    if tk.THINK_END in text:
        head, tail = text.split(tk.THINK_END, 1)
        return head.replace(tk.THINK_START, "").strip(), tail.strip()
    return "", text.strip()


@torch.no_grad()
def generate(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    exs: list[E.Example],
    max_new: int = 500,
    batch: int = 25,
) -> list[tuple[str, int]]:
    """Greedy replies (text without the prompt) and their reasoning-token counts."""
    pixel_fn = make_pixel_fn(tok)
    end_id = tok.convert_tokens_to_ids(tk.THINK_END)
    out: list[tuple[str, int]] = []
    for i in range(0, len(exs), batch):
        chunk = exs[i : i + batch]
        prompts = [tok.encode(E.expand_image(E.prompt_text(ex)), add_special_tokens=False) for ex in chunk]
        n = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (n - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
        images = [ex.image for ex in chunk if ex.image is not None]
        kwargs = {}
        if images:
            pixels = pixel_fn(images)
            kwargs["pixel_values"] = pixels.reshape(len(images), 1, *pixels.shape[-3:])
        gen = model.generate(
            input_ids=ids,
            attention_mask=attn,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=tok.convert_tokens_to_ids(tk.IM_END),
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
        for row in gen[:, n:].tolist():
            ended = row.index(end_id) if end_id in row else None
            n_reason = ended if ended is not None else 0
            out.append((tok.decode(row, skip_special_tokens=True), n_reason))
    return out


def evaluate(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    n: int,
    seed: int,
    cells: list[Cell] | None = None,
    max_new: int = 500,
) -> dict[str, dict[str, float]]:
    was_training = model.training
    model.eval()
    table: dict[str, dict[str, float]] = {}
    for cell in cells or ALL_CELLS:
        exs = held_out(cell, n, seed)
        t0 = time.monotonic()
        replies = generate(model, tok, exs, max_new=max_new)
        dt = time.monotonic() - t0
        correct = 0
        tokens = 0
        for ex, (text, n_reason) in zip(exs, replies, strict=True):
            _, answer = split_reply(text)
            assert ex.problem is not None
            correct += pb.final_integer(answer) == ex.problem.result
            tokens += n_reason
        r = CellResult(len(exs), correct, tokens / len(exs), dt / len(exs))
        table["/".join(cell)] = {
            "n": r.n,
            "pass1": r.pass1,
            "reasoning_tokens": r.reasoning_tokens,
            "seconds": r.seconds_per_answer,
        }
    model.train(was_training)
    return table


def brief(table: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{k}={v['pass1']:.0%}" for k, v in table.items())


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| mode | input | split | n | pass@1 | mean reasoning tokens | s/answer (batched) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, v in table.items():
        mode, kind, split = key.split("/")
        lines.append(
            f"| {mode} | {kind} | {split} | {v['n']:.0f} | {v['pass1']:.1%} | "
            f"{v['reasoning_tokens']:.0f} | {v['seconds']:.2f} |"
        )
    return "\n".join(lines)
