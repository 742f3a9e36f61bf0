"""In-process evaluation with transformers (greedy, or sampled): tracks progress during training and gives
the first table for the model card. ``training.evaluate`` is the through-the-product evaluation.

    python -m training.inproc_eval models/thinkgate-arith --cells long/text/hard --samples 4 --temperature 1
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import cast

import torch
from transformers import Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

from training import examples as E
from training import problems as pb
from training import render
from training import tokenizer as tk
from training.train import make_pixel_fn

Cell = tuple[str, str, str]  # (mode, kind, split)
ALL_CELLS: list[Cell] = [
    (m, k, s) for m in ("long", "short") for k in ("text", "image") for s in ("easy", "hard")
]
PROBE_CELLS: list[Cell] = [
    ("long", "text", "hard"),
    ("long", "image", "hard"),
    ("short", "text", "easy"),
    ("short", "text", "hard"),
]


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
    """A cell's problems: ``kind`` is ``text``, ``image`` (trained font families) or ``font`` (images in
    the family held out of training, render.HELD_OUT_FAMILY)."""
    mode, kind, split = cell
    rng = random.Random(f"{seed}-{mode}-{kind}-{split}")
    families = (render.HELD_OUT_FAMILY,) if kind == "font" else render.TRAIN_FAMILIES
    return [
        E.make_example(
            rng,
            split,
            image_rate=0.0 if kind == "text" else 1.0,
            long_rate=1.0 if mode == "long" else 0.0,
            ood_rate=0.0,
            families=families,
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


def is_right(problem: pb.Problem, text: str) -> bool:
    """Whether a reply's answer (after the thinking) ends with the problem's result."""
    _, answer = split_reply(text)
    return pb.grade(problem, answer)


@torch.no_grad()
def reply_ids(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    prompts: list[list[int]],
    max_new: int,
    temperature: float = 0.0,
    **kwargs: object,
) -> list[list[int]]:
    """The ids generated after each prompt (left-padded together; rows end in padding after the
    end-of-turn token): greedy, or plain sampling at ``temperature`` (no top-k, no top-p)."""
    n = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (n - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False)
    gen = model.generate(
        input_ids=ids,
        attention_mask=attn,
        max_new_tokens=max_new,
        eos_token_id=tok.convert_tokens_to_ids(tk.IM_END),
        pad_token_id=tok.pad_token_id,
        **kwargs,
    )
    return gen[:, n:].tolist()


def generate(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    exs: list[E.Example],
    max_new: int = 500,
    batch: int = 25,
    temperature: float = 0.0,
) -> list[tuple[str, int, int]]:
    """Replies (text without the prompt), their reasoning-token and output-token counts: greedy, or sampled at
    ``temperature``."""
    pixel_fn = make_pixel_fn(tok)
    end_id = tok.convert_tokens_to_ids(tk.THINK_END)
    im_end = tok.convert_tokens_to_ids(tk.IM_END)
    out: list[tuple[str, int, int]] = []
    for i in range(0, len(exs), batch):
        chunk = exs[i : i + batch]
        prompts = [tok.encode(E.expand_image(E.prompt_text(ex)), add_special_tokens=False) for ex in chunk]
        images = [ex.image for ex in chunk if ex.image is not None]
        kwargs = {}
        if images:
            pixels = pixel_fn(images)
            kwargs["pixel_values"] = pixels.reshape(len(images), 1, *pixels.shape[-3:])
        for row in reply_ids(model, tok, prompts, max_new, temperature, **kwargs):
            ended = row.index(end_id) if end_id in row else None
            n_reason = ended if ended is not None else 0
            n_out = row.index(im_end) + 1 if im_end in row else len(row)
            out.append((tok.decode(row, skip_special_tokens=True), n_reason, n_out))
    return out


def evaluate(
    model: Idefics3ForConditionalGeneration,
    tok: PreTrainedTokenizerFast,
    n: int,
    seed: int,
    cells: list[Cell] | None = None,
    max_new: int = 500,
    samples: int = 1,
    temperature: float = 0.0,
) -> dict[str, dict[str, float]]:
    """pass@1 per cell on ``n`` held-out problems; with a ``temperature``, over ``samples`` sampled
    replies per problem (``n`` in the table counts replies)."""
    was_training = model.training
    model.eval()
    table: dict[str, dict[str, float]] = {}
    for cell in cells or ALL_CELLS:
        exs = [ex for ex in held_out(cell, n, seed) for _ in range(samples if temperature > 0 else 1)]
        t0 = time.monotonic()
        replies = generate(model, tok, exs, max_new=max_new, temperature=temperature)
        dt = time.monotonic() - t0
        correct = 0
        tokens = output = 0
        for ex, (text, n_reason, n_out) in zip(exs, replies, strict=True):
            assert ex.problem is not None
            correct += is_right(ex.problem, text)
            tokens += n_reason
            output += n_out
        r = CellResult(len(exs), correct, tokens / len(exs), dt / len(exs))
        table["/".join(cell)] = {
            "n": r.n,
            "pass1": r.pass1,
            "reasoning_tokens": r.reasoning_tokens,
            "output_tokens": output / len(exs),
            "seconds": r.seconds_per_answer,
        }
    model.train(was_training)
    return table


def brief(table: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{k}={v['pass1']:.0%}" for k, v in table.items())


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| mode | input | split | n | pass@1 | mean reasoning tokens | mean output tokens "
        "| s/answer (batched) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, v in table.items():
        mode, kind, split = key.split("/")
        lines.append(
            f"| {mode} | {kind} | {split} | {v['n']:.0f} | {v['pass1']:.1%} | "
            f"{v['reasoning_tokens']:.0f} | {v.get('output_tokens', 0):.0f} | {v['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint in process over several seeds' held-out problems (summed)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--cells", default=",".join("/".join(c) for c in ALL_CELLS), help="mode/input/split,...")
    ap.add_argument("--n", type=int, default=100, help="problems per cell and seed")
    ap.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)), help="held-out seeds (summed)")
    ap.add_argument("--samples", type=int, default=1, help="replies per problem (with --temperature)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--as-is-images", action="store_true", help="images as drawn, not in the glyph grid")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the sampled replies are reproducible
    render.NORMALISED = not args.as_is_images
    tok = PreTrainedTokenizerFast.from_pretrained(str(args.checkpoint))
    model = Idefics3ForConditionalGeneration.from_pretrained(str(args.checkpoint), dtype=torch.float32)
    cells = [cast(Cell, tuple(c.split("/"))) for c in args.cells.split(",")]
    total: dict[str, dict[str, float]] = {}
    for seed in map(int, args.seeds.split(",")):
        table = evaluate(model, tok, args.n, seed, cells, samples=args.samples, temperature=args.temperature)
        for key, v in table.items():
            zero = {"n": 0, "pass1": 0.0, "reasoning_tokens": 0.0, "output_tokens": 0.0, "seconds": 0.0}
            acc = total.setdefault(key, zero)
            for field in (
                "pass1",
                "reasoning_tokens",
                "output_tokens",
                "seconds",
            ):  # means, weighted by replies
                acc[field] = (acc[field] * acc["n"] + v[field] * v["n"]) / (acc["n"] + v["n"])
            acc["n"] += v["n"]
        print(f"[eval] seed {seed}: {brief(table)}", flush=True)
    print(format_table(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
