"""Training/eval examples: a chat prompt (text or image + instruction), a mode, and the target reply,
encoded to token ids with a per-token loss weight."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image
from transformers import PreTrainedTokenizerFast

from training import problems as pb
from training import tokenizer as tk
from training.modelcfg import IMAGE_SEQ_LEN
from training.render import Layout, render_with_layout

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a careful calculator.", "Answer the question.")
# Copying digits is what a tiny transformer learns last and everything else depends on: with uniform loss
# weights the copy circuits had not formed after 4,000 steps, while weighting the copies up made them
# form within 200 (measured: restatement digits 26 % right after 525 steps at weight 1, 53 % after 192 at
# weight 5). So the restated problem (first thinking line; for images the reading step, the only thing
# the vision tower has to learn) and the final answer (a copy of the result line) weigh more.
RESTATE_WEIGHT = 4.0
READ_WEIGHT = 5.0
ANSWER_WEIGHT = 2.0


@dataclass
class Example:
    problem: pb.Problem | None  # None: out-of-domain prompt
    long: bool
    user_text: str
    image: Image.Image | None = None
    image_first: bool = True
    system: str | None = None
    slip_rate: float = 0.0
    layout: Layout | None = None  # where the problem was drawn (image examples)
    read_only: bool = False  # the reply is the reading step alone (see `reading_example`)


def make_example(
    rng: random.Random,
    split: str = "train",
    *,
    image_rate: float = 0.3,
    long_rate: float = 0.5,
    ood_rate: float = 0.04,
    slip_rate: float = 0.1,
    short_easy_rate: float = 0.0,
    short_image_rate: float | None = None,
    exclude: frozenset[pb.Problem] = frozenset(),
) -> Example:
    """One example. ``short_easy_rate``: share of short-mode problems drawn from the easy split (short
    answers are cheap to train on, and easy problems answered directly need many repetitions);
    ``short_image_rate``: image share for short mode (reading is learned in long mode, where the problem
    is restated); ``exclude``: held-out evaluation problems never trained on."""
    long = rng.random() < long_rate
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.05 else None
    if split == "train" and rng.random() < ood_rate:
        return Example(None, long, pb.ood_prompt(rng), system=system)
    use_easy = short_easy_rate > 0 and not long and rng.random() < short_easy_rate
    p = pb.sample_problem(rng, "easy" if use_easy else split)
    while p in exclude:
        p = pb.sample_problem(rng, "easy" if use_easy else split)
    rate = image_rate if long or short_image_rate is None else short_image_rate
    if rng.random() < rate:
        image, layout = render_with_layout(pb.image_text(p, rng), rng)
        instruction = rng.choice(pb.IMAGE_INSTRUCTIONS)
        return Example(p, long, instruction, image, rng.random() < 0.8, system, slip_rate, layout)
    return Example(p, long, pb.text_prompt(p, rng), system=system, slip_rate=slip_rate)


def reading_example(rng: random.Random, exclude: frozenset[pb.Problem] = frozenset()) -> Example:
    """An image problem in long mode whose reply is only the reading step (the restated problem):
    a short, cheap example that teaches the language model to read the image tokens."""
    ex = make_example(rng, image_rate=1.0, long_rate=1.0, ood_rate=0.0, exclude=exclude)
    ex.read_only = True
    return ex


# Short-mode drill (`drill` stages): easy problems in short mode, weighted to the kinds a direct
# answer got wrong most (measured on the image-reading weights, 300 problems: 2x2-digit products
# 5 %, 2x1 and 1x2 73 % and 82 %, 2-2-digit differences 45 %, 1-1 87 %, sums 95-100 %).
DRILL_WEIGHTS = {
    ("*", 2, 2): 4.0,
    ("*", 1, 2): 2.0,
    ("*", 2, 1): 2.0,
    ("-", 2, 2): 3.0,
    ("-", 1, 1): 1.5,
    ("-", 2, 1): 1.5,
}


def drill_example(rng: random.Random, exclude: frozenset[pb.Problem] = frozenset()) -> Example:
    """A short-mode text example on an easy problem, drawn with `DRILL_WEIGHTS` (rejection sampling);
    its reply is `problems.short_answer`."""
    top = max(DRILL_WEIGHTS.values())
    while True:
        p = pb.sample_problem(rng, "easy")
        weight = DRILL_WEIGHTS.get((p.op, len(str(p.a)), len(str(p.b))), 1.0)
        if p not in exclude and rng.random() * top < weight:
            return Example(p, False, pb.text_prompt(p, rng))


def messages(ex: Example) -> list[dict[str, object]]:
    """OpenAI-style chat messages for this example (as a client would send them)."""
    out: list[dict[str, object]] = []
    if ex.system:
        out.append({"role": "system", "content": ex.system})
    if ex.image is None:
        out.append({"role": "user", "content": ex.user_text})
    else:
        parts: list[dict[str, object]] = [{"type": "image"}, {"type": "text", "text": ex.user_text}]
        out.append({"role": "user", "content": parts if ex.image_first else parts[::-1]})
    return out


def prompt_text(ex: Example) -> str:
    """The chat template's rendering, written out directly (fast); a test checks it matches the template."""
    text = ""
    if ex.system:
        text += f"{tk.IM_START}system\n{ex.system}{tk.IM_END}\n"
    if ex.image is None:
        user = ex.user_text
    else:
        user = tk.IMAGE + ex.user_text if ex.image_first else ex.user_text + tk.IMAGE
    text += f"{tk.IM_START}user\n{user}{tk.IM_END}\n{tk.IM_START}assistant\n"
    text += f"{tk.THINK_START}\n" if ex.long else f"{tk.THINK_START}\n\n{tk.THINK_END}\n\n"
    return text


def expand_image(text: str) -> str:
    """What the Idefics3 processor does to each <image> placeholder (no image splitting)."""
    return text.replace(tk.IMAGE, tk.FAKE_IMAGE + tk.GLOBAL_IMAGE + tk.IMAGE * IMAGE_SEQ_LEN + tk.FAKE_IMAGE)


def target_segments(ex: Example, rng: random.Random) -> list[tuple[str, float]]:
    """The reply as (text, loss weight) segments; weight 0 marks a deliberate slip."""
    trace = pb.ood_trace() if ex.problem is None else pb.long_trace(ex.problem, rng, ex.slip_rate)
    if ex.read_only:
        return [(trace.thinking[: trace.thinking.index("\n") + 1], READ_WEIGHT)]
    if not ex.long:
        short = trace.answer if ex.problem is None else pb.short_answer(ex.problem)
        return [(short + tk.IM_END, 1.0)]
    tail = f"{tk.THINK_END}\n\n" + trace.answer + tk.IM_END
    answer_weight = 1.0 if ex.problem is None else ANSWER_WEIGHT
    segs: list[tuple[str, float]] = []
    thinking, pos = trace.thinking, 0
    first_line_end = thinking.index("\n") + 1
    cuts = sorted({first_line_end, *(x for span in trace.masked_spans for x in span)})
    for cut in [*cuts, len(thinking)]:
        if cut <= pos:
            continue
        piece = thinking[pos:cut]
        weight = 0.0 if (pos, cut) in trace.masked_spans else 1.0
        if pos == 0 and ex.problem is not None:
            weight = READ_WEIGHT if ex.image is not None else RESTATE_WEIGHT
        segs.append((piece, weight))
        pos = cut
    segs.append((tail, answer_weight))
    return segs


def encode(ex: Example, tok: PreTrainedTokenizerFast, rng: random.Random) -> tuple[list[int], list[float]]:
    """Token ids of prompt + reply and per-token loss weights (0 on the prompt)."""
    ids = tok.encode(expand_image(prompt_text(ex)), add_special_tokens=False)
    weights = [0.0] * len(ids)
    for text, w in target_segments(ex, rng):
        piece = tok.encode(text, add_special_tokens=False)
        ids += piece
        weights += [w] * len(piece)
    return ids, weights


def corpus(rng: random.Random, n: int) -> list[str]:
    """Text for training the tokenizer: prompts and replies as the model will see them."""
    out = []
    for _ in range(n):
        ex = make_example(rng, image_rate=0.1, ood_rate=0.1)
        out.append(prompt_text(ex) + "".join(t for t, _ in target_segments(ex, rng)))
    return out
