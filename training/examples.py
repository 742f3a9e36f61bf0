"""Training/eval examples: a chat prompt (text or image + instruction), a mode, and the target reply,
encoded to token ids with a per-token loss weight."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from PIL import Image
from transformers import PreTrainedTokenizerFast

from app.profiles.calculator import CALCULATOR_TOOL
from training import problems as pb
from training import tokenizer as tk
from training import traces as tr
from training.modelcfg import IMAGE_SEQ_LEN
from training.render import TRAIN_FAMILIES, Layout, render_with_layout

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
    # Earlier turns of the conversation: (user text, the assistant's reply as a client sends it back).
    history: list[tuple[str, str]] = field(default_factory=list)
    tools: list[dict[str, object]] | None = None  # the request's tools (the calculator among them?)
    # With the calculator offered, long mode calls it ("call"), then answers from its result ("after").
    phase: str = ""
    call_content: str = ""  # the calling turn's content as a client sends it back ("" or "\n\n")


def make_example(
    rng: random.Random,
    split: str = "train",
    *,
    image_rate: float = 0.3,
    long_rate: float = 0.5,
    ood_rate: float = 0.08,
    slip_rate: float = 0.1,
    short_easy_rate: float = 0.0,
    short_image_rate: float | None = None,
    conversation_rate: float = 0.0,
    tools_rate: float = 0.0,
    hard_rate: float = 0.0,
    division_rate: float = 0.0,
    exclude: frozenset[pb.Problem] = frozenset(),
    families: tuple[str, ...] = TRAIN_FAMILIES,
) -> Example:
    """One example. ``short_easy_rate``: share of short-mode problems drawn from the easy split (short
    answers are cheap to train on, and easy problems answered directly need many repetitions);
    ``short_image_rate``: image share for short mode (reading is learned in long mode, where the problem
    is restated); ``conversation_rate``: share with 1-3 earlier turns; ``tools_rate``: share offering
    tools (mostly the calculator); ``hard_rate``: share of the other problems drawn from the hard split
    (the largest sizes, learned last); ``division_rate``: share of the problems that are divisions
    (besides the quarter the uniform draw gives); ``exclude``: held-out evaluation problems never trained on;
    ``families``: the font families images are drawn in (render.py)."""
    long = rng.random() < long_rate
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.05 else None
    history = conversation(rng, rng.randint(1, 3)) if rng.random() < conversation_rate else []
    tools = offered_tools(rng) if rng.random() < tools_rate else None
    if split == "train" and rng.random() < ood_rate:
        return Example(None, long, pb.ood_prompt(rng), system=system, history=history, tools=tools)
    if short_easy_rate > 0 and not long and rng.random() < short_easy_rate:
        split = "easy"
    elif split == "train" and hard_rate > 0 and rng.random() < hard_rate:
        split = "hard"
    op = "/" if division_rate > 0 and rng.random() < division_rate else None
    p = pb.sample_problem(rng, split, op)
    while p in exclude:
        p = pb.sample_problem(rng, split, op)
    ex = Example(
        p, long, pb.text_prompt(p, rng), system=system, slip_rate=slip_rate, history=history, tools=tools
    )
    rate = image_rate if long or short_image_rate is None else short_image_rate
    if rng.random() < rate:
        ex.image, ex.layout = render_with_layout(pb.image_text(p, rng), rng, families=families)
        ex.user_text = rng.choice(pb.IMAGE_INSTRUCTIONS)
        ex.image_first = rng.random() < 0.8
    if long and offers_calculator(tools):
        ex.phase = rng.choice(("call", "after"))
        ex.call_content = "" if rng.random() < 0.7 else "\n\n"
    return ex


def conversation(rng: random.Random, turns: int) -> list[tuple[str, str]]:
    """Earlier turns: problems of any size (now and then an out-of-domain prompt), each with the reply
    a client sends back: long mode's answer (its thinking is not replayed) or short mode's solution."""
    out = []
    for _ in range(turns):
        if rng.random() < 0.1:
            out.append((pb.ood_prompt(rng), pb.OOD_REPLY))
            continue
        p = pb.sample_problem(rng, rng.choice(("train", "easy")))
        reply = pb.answer_text(p) if rng.random() < 0.5 else tr.short_solution(p)
        out.append((pb.text_prompt(p, rng), reply))
    return out


# Other tools a client may offer (the model answers as it would without them).
OTHER_TOOLS: tuple[dict[str, object], ...] = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
)


def offered_tools(rng: random.Random) -> list[dict[str, object]]:
    """The calculator alone (most often), with another tool, or other tools only."""
    r = rng.random()
    if r < 0.6:
        return [CALCULATOR_TOOL]
    if r < 0.8:
        tools = [CALCULATOR_TOOL, rng.choice(OTHER_TOOLS)]
        rng.shuffle(tools)
        return tools
    return [rng.choice(OTHER_TOOLS)]


def offers_calculator(tools: list[dict[str, object]] | None) -> bool:
    return any(tool == CALCULATOR_TOOL for tool in tools or [])


def reading_example(rng: random.Random, exclude: frozenset[pb.Problem] = frozenset()) -> Example:
    """An image problem in long mode whose reply is only the reading step (the restated problem):
    a short, cheap example that teaches the language model to read the image tokens."""
    ex = make_example(rng, image_rate=1.0, long_rate=1.0, ood_rate=0.0, exclude=exclude)
    ex.read_only = True
    return ex


def drill_example(rng: random.Random, exclude: frozenset[pb.Problem] = frozenset()) -> Example:
    """A short-mode text example (`drill` stages): easy and hard problems alike, a third of them in a
    conversation; its reply is `traces.short_solution`."""
    split = "easy" if rng.random() < 0.5 else "train"
    p = pb.sample_problem(rng, split)
    while p in exclude:
        p = pb.sample_problem(rng, split)
    history = conversation(rng, rng.randint(1, 3)) if rng.random() < 0.3 else []
    return Example(p, False, pb.text_prompt(p, rng), history=history)


def messages(ex: Example) -> list[dict[str, object]]:
    """OpenAI-style chat messages for this example (as a client would send them)."""
    out: list[dict[str, object]] = []
    if ex.system:
        out.append({"role": "system", "content": ex.system})
    for user, reply in ex.history:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    if ex.image is None:
        out.append({"role": "user", "content": ex.user_text})
    else:
        parts: list[dict[str, object]] = [{"type": "image"}, {"type": "text", "text": ex.user_text}]
        out.append({"role": "user", "content": parts if ex.image_first else parts[::-1]})
    if ex.phase == "after" and ex.problem is not None:
        arguments = '{"expression": "' + ex.problem.expression + '"}'
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": tr.CALCULATOR, "arguments": arguments},
        }
        out.append({"role": "assistant", "content": ex.call_content, "tool_calls": [call]})
        out.append({"role": "tool", "tool_call_id": "call_1", "content": tr.calculator_result(ex.problem)})
    return out


def prompt_text(ex: Example) -> str:
    """The chat template's rendering: written out directly (fast) for a single turn without tools (a
    test checks it matches the template), else rendered by the template itself."""
    if ex.history or ex.tools or ex.phase:
        return _template().render(
            messages=messages(ex), tools=ex.tools, add_generation_prompt=True, enable_thinking=ex.long
        )
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


@lru_cache(maxsize=1)
def _template() -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(tk.CHAT_TEMPLATE)


def expand_image(text: str) -> str:
    """What the Idefics3 processor does to each <image> placeholder (no image splitting)."""
    return text.replace(tk.IMAGE, tk.FAKE_IMAGE + tk.GLOBAL_IMAGE + tk.IMAGE * IMAGE_SEQ_LEN + tk.FAKE_IMAGE)


def reply_trace(ex: Example, rng: random.Random) -> tr.Trace:
    if ex.problem is None:
        return tr.ood_trace()
    if ex.phase == "call":
        return tr.calling_trace(ex.problem)
    if ex.phase == "after":
        return tr.after_tool_trace(ex.problem)
    return tr.long_trace(ex.problem, rng, ex.slip_rate)


def target_segments(ex: Example, rng: random.Random) -> list[tuple[str, float]]:
    """The reply as (text, loss weight) segments; weight 0 marks a deliberate slip. The restated
    problem and the final answer weigh more (copies: see RESTATE_WEIGHT)."""
    trace = reply_trace(ex, rng)
    if ex.read_only:
        return [(trace.thinking[: trace.thinking.index("\n") + 1], READ_WEIGHT)]
    restate = READ_WEIGHT if ex.image is not None else RESTATE_WEIGHT
    if not ex.long:
        if ex.problem is None:
            return [(trace.answer + tk.IM_END, 1.0)]
        short = tr.short_solution(ex.problem)
        cut = short.index(":")
        return [(short[:cut], restate), (short[cut:] + tk.IM_END, 1.0)]
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
        if pos == 0 and ex.problem is not None and ex.phase != "after":
            weight = restate
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
        ex = make_example(rng, image_rate=0.1, ood_rate=0.1, conversation_rate=0.2, tools_rate=0.2)
        out.append(prompt_text(ex) + "".join(t for t, _ in target_segments(ex, rng)))
    return out
