"""Smoke evaluation of the bundled model through the product: the gateway in front of the real vLLM
engine, held-out problems asked over the OpenAI API in both reasoning modes, text and image; the
refusal outside the domain, a conversation, and the calculator tool loop (the real engine's `hermes`
tool parser reading the model's own call).

The shipped weights are the second generation (issue #20: the wider domain, the refusal without a
number, conversations, the calculator). The first generation's checks stay for its weights
(`git checkout a1e777b -- training && make model`): on them the smoke evaluation asks its own, narrower
domain, and the second generation's behaviours are strict expected failures. The shipped tokenizer
tells the generations apart (the second has the tool-call markers as tokens).

Thresholds sit under the model card's figures with room for sampling error on 10-20 problems."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from training import examples as E
from training import problems as pb
from training.eval_dialogues import ask_conversation, ask_with_calculator
from training.evaluate import GATEWAY_SEED, Answer, ask
from training.inproc_eval import held_out
from training.problems import OOD_REPLY

pytestmark = pytest.mark.engine

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "thinkgate-arith"
SECOND_GENERATION = "<tool_call>" in (SHIPPED / "tokenizer.json").read_text()
second_generation = pytest.mark.xfail(
    not SECOND_GENERATION, reason="the second-generation weights (issue #20) are not shipped yet", strict=True
)

CELLS: dict[tuple[str, str, str], int] = {
    ("long", "text", "hard"): 20,
    ("long", "image", "hard"): 10,
    ("short", "text", "easy"): 20,
    ("short", "text", "hard"): 10,
}
# Each generation's floors, under its model card's figures with room for sampling error on 10-20 problems:
# (minimum pass@1 per cell, minimum long/text/hard, minimum long-over-short on hard text).
FLOORS: dict[bool, tuple[dict[tuple[str, str, str], float], float, float]] = {
    False: (
        {("long", "text", "hard"): 0.85, ("long", "image", "hard"): 0.7, ("short", "text", "easy"): 0.85},
        0.7,
        0.5,
    ),
    True: (  # card: long/text/hard 92.5 %, long/image/hard 95 %, short/text/easy 100 %, short hard 37.5 %
        {("long", "text", "hard"): 0.8, ("long", "image", "hard"): 0.7, ("short", "text", "easy"): 0.9},
        0.8,
        0.35,
    ),
}
MIN_PASS, MIN_LONG_HARD, MIN_LONG_OVER_SHORT = FLOORS[SECOND_GENERATION]


def _first_generation_problem(rng: random.Random, split: str) -> pb.Problem:
    """The first generation's domain: easy 1-2 digit operands; hard 6-digit sums and differences and
    products of 3 by 2 digits (either order)."""
    op = rng.choice("+-*")
    if split == "easy":
        return pb.Problem(rng.randint(0, 99), op, rng.randint(0, 99))
    if op == "*":
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        return pb.Problem(a, op, b) if rng.random() < 0.7 else pb.Problem(b, op, a)
    return pb.Problem(rng.randint(10**5, 10**6 - 1), op, rng.randint(10**5, 10**6 - 1))


def _first_generation_image(p: pb.Problem, rng: random.Random) -> Image.Image:
    """The problem in Pillow's default font, black on white, as the first generation was trained."""
    font = ImageFont.load_default(size=rng.randint(14, 28))
    text = f"{p.a} {'x' if p.op == '*' else p.op} {p.b}"
    image = Image.new("RGB", (256, 96), "white")
    ImageDraw.Draw(image).text((rng.randint(4, 40), rng.randint(4, 40)), text, fill="black", font=font)
    return image


def _examples(cell: tuple[str, str, str], n: int) -> list[E.Example]:
    if SECOND_GENERATION:
        return held_out(cell, n, GATEWAY_SEED)
    mode, kind, split = cell
    rng = random.Random(f"{GATEWAY_SEED}-{'-'.join(cell)}")
    out = []
    for _ in range(n):
        p = _first_generation_problem(rng, split)
        ex = E.Example(p, mode == "long", pb.text_prompt(p, rng))
        if kind == "image":
            ex.image, ex.user_text = _first_generation_image(p, rng), "Solve the problem in the image."
        out.append(ex)
    return out


def _run(client: httpx.Client) -> dict[tuple[str, str, str], list[Answer]]:
    results = {}
    with ThreadPoolExecutor(6) as pool:
        for cell, n in CELLS.items():
            exs = _examples(cell, n)
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
    """Long mode's reasoning is worth its tokens on hard problems: a checkpoint that loses it fails here."""
    rate, report = _rates(results)
    long_hard, short_hard = rate[("long", "text", "hard")], rate[("short", "text", "hard")]
    assert long_hard >= MIN_LONG_HARD, report
    assert long_hard - short_hard >= MIN_LONG_OVER_SHORT, report


def test_smoke_evaluation_meets_the_thresholds(results: dict[tuple[str, str, str], list[Answer]]) -> None:
    rate, report = _rates(results)
    for cell, minimum in MIN_PASS.items():
        assert rate[cell] >= minimum, f"{'/'.join(cell)} below {minimum:.0%}: {report}"


@pytest.mark.parametrize("mode", ["long", "short"])
def test_out_of_domain_chat_gets_the_fixed_reply(client: httpx.Client, mode: str) -> None:
    body = {"model": "thinkgate-arith", "messages": [{"role": "user", "content": "Hello! Who are you?"}],
            "reasoning_mode": mode, "max_tokens": 200, "temperature": 0}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"] or ""
    assert content.strip().startswith("I can only solve integer arithmetic")  # both generations' reply


@second_generation
@pytest.mark.parametrize(
    ("prompt", "mode"),
    [
        (prompt, mode)
        for prompt in (
            "Hello! Who are you?",
            "What is 123456789 + 1?",
            "What is 12345 * 678?",
            "What is 7 / 0?",
        )
        for mode in ("long", "short")
    ],
)
def test_out_of_domain_prompts_get_the_fixed_reply_without_a_number(
    client: httpx.Client, mode: str, prompt: str
) -> None:
    """Chat, and problems just past the domain's sizes: the refusal, never a guessed number."""
    body = {"model": "thinkgate-arith", "messages": [{"role": "user", "content": prompt}],
            "reasoning_mode": mode, "max_tokens": 200, "temperature": 0}  # fmt: skip
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"] or ""
    assert content.strip() == OOD_REPLY
    assert not pb.has_number(content)


@second_generation
def test_a_conversation_answers_its_last_question(client: httpx.Client) -> None:
    """Four easy problems in one short-mode conversation, each sent with the earlier turns: turns 2-4
    are answered (the first generation answered the first question again)."""
    rng = random.Random(5)
    outcomes = []
    for _ in range(3):
        outcomes += ask_conversation(client, [pb.sample_problem(rng, "easy") for _ in range(4)], rng)
    assert sum(o.correct for o in outcomes) >= 7, [o.detail for o in outcomes]


@second_generation
def test_long_mode_calls_the_calculator_and_answers_from_its_result(client: httpx.Client) -> None:
    """The calculator offered: the engine's `hermes` parser turns the model's `<tool_call>` into an
    OpenAI tool call, the result goes back as a `tool` message, and the answer is the result, with
    fewer reasoning tokens than long mode alone."""
    rng = random.Random(6)
    problems = [pb.sample_problem(rng, "hard") for _ in range(6)]
    outcomes = [ask_with_calculator(client, p, rng) for p in problems]
    assert all(not o.error for o in outcomes), [o.error for o in outcomes]
    assert sum(o.correct for o in outcomes) >= 5, [o.detail for o in outcomes]
    assert max(o.reasoning_tokens for o in outcomes) < 60  # long mode alone: ~140-410 on hard problems


def test_requests_without_a_temperature_are_answered_greedily(client: httpx.Client) -> None:
    """The model card promises greedy answers by default. vLLM takes its default temperature from the
    generation config's `temperature` (1.0 when absent), so the profile's engine flags set it to 0. The
    control samples a long trace at temperature 2, where replies wander (the second generation is sure
    enough of this product that 1.5 sometimes gives the greedy trace three times)."""
    question = {"role": "user", "content": "What is 4821 * 375?"}
    body = {"model": "thinkgate-arith", "messages": [question], "reasoning_mode": "long", "max_tokens": 300}

    def reply(extra: dict[str, Any]) -> tuple[str | None, str | None]:
        r = client.post("/v1/chat/completions", json={**body, **extra})
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        return message.get("reasoning_content"), message["content"]

    greedy = {reply({}) for _ in range(4)}
    assert len(greedy) == 1
    assert greedy == {reply({"temperature": 0})}
    sampled = {reply({"temperature": 2.0}) for _ in range(4)}
    assert sampled - greedy  # the control: sampled, the replies do wander
