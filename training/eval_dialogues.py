"""The product evaluation's cells beyond one question: out-of-domain prompts, conversations, and the
calculator tool loop. Each goes through the gateway's OpenAI API as a client would (``training.evaluate``
runs them after the single-question cells).

- ``ood``: prompts outside the domain (chat, problems just past its sizes, other maths), in both
  modes; right when the answer states no number (the refusal has none).
- ``turns``: four-turn conversations of easy problems in short mode, each turn sent with the earlier
  turns and the model's own earlier replies; graded on turns 2-4.
- ``calculator``: hard problems in long mode with the calculator offered: the first reply's tool call
  is run (app/profiles/calculator.py, what the web UI runs too), its result sent back, and the second
  reply graded. Reasoning tokens are summed over both requests.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from app.profiles.calculator import CALCULATOR_TOOL, answer_call
from training import problems as pb

MODEL = "thinkgate-arith"


@dataclass
class Outcome:
    correct: bool
    reasoning_tokens: int
    output_tokens: int
    error: str = ""
    detail: str = ""


def _chat(
    client: httpx.Client, messages: list[dict[str, object]], mode: str, **extra: object
) -> dict[str, object]:
    body = {"model": MODEL, "messages": messages, "reasoning_mode": mode, "max_tokens": 768, "temperature": 0}
    r = client.post("/v1/chat/completions", json={**body, **extra})
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return dict(r.json())


def usage_tokens(body: dict[str, object]) -> tuple[int, int]:
    """(reasoning tokens, output tokens) from a chat completion's usage."""
    usage = body.get("usage") or {}
    assert isinstance(usage, dict)
    details = usage.get("completion_tokens_details") or {}
    return int(details.get("reasoning_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _message(body: dict[str, object]) -> dict[str, object]:
    choices = body["choices"]
    assert isinstance(choices, list)
    return dict(choices[0]["message"])


def ask_ood(client: httpx.Client, prompt: str, mode: str) -> Outcome:
    body = _chat(client, [{"role": "user", "content": prompt}], mode)
    content = str(_message(body).get("content") or "")
    return Outcome(not pb.has_number(content), *usage_tokens(body), detail=content[:80])


def ask_conversation(client: httpx.Client, problems: list[pb.Problem], rng: random.Random) -> list[Outcome]:
    """One conversation, turn by turn in short mode; the outcomes of turns 2 onwards."""
    messages: list[dict[str, object]] = []
    out = []
    for turn, p in enumerate(problems):
        messages.append({"role": "user", "content": pb.text_prompt(p, rng)})
        body = _chat(client, messages, "short")
        content = str(_message(body).get("content") or "")
        messages.append({"role": "assistant", "content": content})
        if turn:
            out.append(Outcome(pb.grade(p, content), *usage_tokens(body), detail=content[-40:]))
    return out


def ask_with_calculator(client: httpx.Client, p: pb.Problem, rng: random.Random) -> Outcome:
    """Long mode with the calculator offered: run its calls (at most 3 rounds), grade the answer."""
    messages: list[dict[str, object]] = [{"role": "user", "content": pb.text_prompt(p, rng)}]
    reasoning = output = 0
    for _ in range(3):
        body = _chat(client, messages, "long", tools=[CALCULATOR_TOOL])
        r, o = usage_tokens(body)
        reasoning, output = reasoning + r, output + o
        message = _message(body)
        calls = message.get("tool_calls") or []
        assert isinstance(calls, list)
        if not calls:
            content = str(message.get("content") or "")
            return Outcome(pb.grade(p, content), reasoning, output, detail=content[-40:])
        messages.append({"role": "assistant", "content": message.get("content") or "", "tool_calls": calls})
        for call in calls:
            result = answer_call(call["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return Outcome(False, reasoning, output, detail="no answer after 3 tool rounds")


def _safely(fn: Callable[[], Outcome]) -> Outcome:
    try:
        return fn()
    except (httpx.HTTPError, RuntimeError, KeyError, AssertionError) as exc:
        return Outcome(False, 0, 0, error=f"{type(exc).__name__}: {exc}")


def _row(outcomes: list[Outcome], seconds: float) -> dict[str, float]:
    return {
        "n": len(outcomes),
        "pass1": sum(o.correct for o in outcomes) / max(len(outcomes), 1),
        "reasoning_tokens": statistics.mean(o.reasoning_tokens for o in outcomes) if outcomes else 0.0,
        "output_tokens": statistics.mean(o.output_tokens for o in outcomes) if outcomes else 0.0,
        "errors": sum(bool(o.error) for o in outcomes),
        "seconds": seconds,
    }


def evaluate_dialogues(
    client: httpx.Client, n: int, seed: int, concurrency: int = 8
) -> dict[str, dict[str, float]]:
    """The three kinds of cells, ``n`` items each (conversations: ``n // 3`` of four turns)."""
    table: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for mode in ("long", "short"):
            rng = random.Random(f"{seed}-ood-{mode}")
            prompts = [pb.ood_prompt(rng) for _ in range(n)]
            t0 = time.monotonic()
            outcomes = list(pool.map(lambda q, m=mode: _safely(lambda: ask_ood(client, q, m)), prompts))
            table[f"{mode}/text/ood"] = _row(outcomes, time.monotonic() - t0)
            _report(f"{mode}/text/ood", table, outcomes)
        rng = random.Random(f"{seed}-turns")
        chats = [
            ([pb.sample_problem(rng, "easy") for _ in range(4)], random.Random(rng.random()))
            for _ in range(max(n // 3, 1))
        ]
        t0 = time.monotonic()
        results = list(pool.map(lambda c: _conversation_or_error(client, *c), chats))
        outcomes = [o for chat in results for o in chat]
        table["short/text/easy, turns 2-4"] = _row(outcomes, time.monotonic() - t0)
        _report("short/text/easy, turns 2-4", table, outcomes)
        rng = random.Random(f"{seed}-calculator")
        problems = [(pb.sample_problem(rng, "hard"), random.Random(rng.random())) for _ in range(n)]
        t0 = time.monotonic()
        outcomes = list(pool.map(lambda c: _safely(lambda: ask_with_calculator(client, *c)), problems))
        table["long/text/hard + calculator"] = _row(outcomes, time.monotonic() - t0)
        _report("long/text/hard + calculator", table, outcomes)
    return table


def _conversation_or_error(
    client: httpx.Client, problems: list[pb.Problem], rng: random.Random
) -> list[Outcome]:
    try:
        return ask_conversation(client, problems, rng)
    except (httpx.HTTPError, RuntimeError, KeyError) as exc:
        return [Outcome(False, 0, 0, error=f"{type(exc).__name__}: {exc}")] * (len(problems) - 1)


def _report(key: str, table: dict[str, dict[str, float]], outcomes: list[Outcome]) -> None:
    errors = [o.error for o in outcomes if o.error]
    wrong = [o.detail for o in outcomes if not o.correct and not o.error][:2]
    print(
        f"[eval] {key}: {table[key]['pass1']:.1%} ({table[key]['seconds']:.0f} s)"
        + (f", {len(errors)} errors, first: {errors[0]}" if errors else "")
        + (f", e.g. wrong: {wrong}" if wrong else ""),
        flush=True,
    )


def format_dialogues(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| cell | n | right | mean reasoning tokens | mean output tokens |",
        "|---|---|---|---|---|",
    ]
    for key, v in table.items():
        lines.append(
            f"| {key} | {v['n']:.0f} | {v['pass1']:.1%} | {v['reasoning_tokens']:.0f} | "
            f"{v['output_tokens']:.0f} |"
        )
    return "\n".join(lines)
