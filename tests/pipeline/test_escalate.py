"""Auto mode's escalation in process (`pipeline/escalate.py`): the short first attempt is buffered and
kept or replaced by the long one, the counts carry on from one attempt to the next, and the
log-probabilities the client did not ask for are removed. The engine is an httpx mock that streams
as vLLM 0.32 does (continuous usage; `logprobs.content` per token when asked), because a real model
cannot be made to produce a chosen confidence; the same behaviour through a gateway process is in
tests/api/test_auto_escalation.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.auth.principal import ANONYMOUS, Principal
from app.engine.pool import UpstreamPool
from app.metering.prices import TokenCounts
from app.pipeline.escalate import EscalatingRun, answer_logprobs, confidence, escalation_threshold
from app.pipeline.media import ImageLimits
from app.pipeline.prepare import MediaPolicy, PreparedChat, prepare_chat
from app.pipeline.run import ChatRun
from app.profiles.profile import ProfileError, ProfileRegistry, parse_profile
from app.protocols.chat.adapter import turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest

ROOT = Path(__file__).resolve().parents[2]
ARITH = ProfileRegistry.from_dir(ROOT / "models" / "profiles").by_name("thinkgate-arith")
PROFILES = ProfileRegistry([dataclasses.replace(ARITH, escalate_below=-1.0)])
MEDIA = MediaPolicy(ImageLimits(max_bytes=1_000_000, max_pixels=10_000_000, max_side=4096), max_images=2)
MODEL = "thinkgate-arith"
PROMPT_TOKENS = 11


class Engine:
    """Short mode answers "The answer is 42." (4 tokens) with `logprob` per token when asked; long
    mode reasons 3 tokens, then the same answer. Every request body is kept."""

    def __init__(self, logprob: float | None = -0.05, fail_short: bool = False) -> None:
        self.logprob = logprob
        self.fail_short = fail_short
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        self.requests.append(body)
        long = body["chat_template_kwargs"]["enable_thinking"]
        pieces = [{"reasoning": w} for w in ("7", "*", "6")] if long else []
        pieces += [{"content": w} for w in ("The", " answer", " is", " 42.")]
        events = []
        for count, delta in enumerate(pieces, start=1):
            logprobs = None
            if body.get("logprobs") and self.logprob is not None:
                token = {"token": "x", "logprob": self.logprob, "bytes": [120], "top_logprobs": []}
                logprobs = {"content": [token]}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": count}
            events.append({"id": "e", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                           "choices": [choice], "usage": usage})  # fmt: skip
            if self.fail_short and not long and count == 2:
                break  # the stream breaks off without [DONE]
        else:
            final = {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": "stop"}
            events.append({"id": "e", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                           "choices": [final], "usage": {"prompt_tokens": PROMPT_TOKENS,
                                                         "completion_tokens": len(pieces)}})  # fmt: skip
        payloads = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
        if not (self.fail_short and not long):
            payloads.append(b"data: [DONE]\n\n")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(payloads))


def prepared(**fields: Any) -> PreparedChat:
    request = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "What is 7 * 6?"}], **fields}
    )
    return prepare_chat(turn_from_chat(request), ANONYMOUS, PROFILES, MEDIA)


async def run(engine: Engine, **fields: Any) -> tuple[EscalatingRun, list[dict[str, Any]]]:
    """The escalating run of one auto-mode turn to its end, and the dict chunks it handed on."""
    turn = prepared(**fields)
    threshold = escalation_threshold(turn, ANONYMOUS)
    assert threshold == -1.0
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
        pool = UpstreamPool(["http://engine.test"], client)
        pool.replicas[0].healthy, pool.replicas[0].models = True, frozenset({MODEL})
        escalating = EscalatingRun(turn, threshold, lambda p: ChatRun(p, pool, client, keep_text=True))
        await escalating.start()
        chunks = [c for batch in [b async for b in escalating.chunks()] for c in batch if isinstance(c, dict)]
        await escalating.close()
    return escalating, chunks


def texts(escalating: EscalatingRun) -> tuple[str, str]:
    state = escalating.choices[0]
    return "".join(state.reasoning), "".join(state.content)


async def test_a_confident_short_answer_is_returned_from_one_engine_request() -> None:
    engine = Engine(logprob=-0.05)
    escalating, chunks = await run(engine)
    assert len(engine.requests) == 1
    sent = engine.requests[0]
    assert sent["chat_template_kwargs"] == {"enable_thinking": False} and sent["logprobs"] is True
    assert "thinking_token_budget" not in sent
    assert texts(escalating) == ("", "The answer is 42.")
    assert escalating.decision.mode == "short"
    assert escalating.decision.reason == "auto: arithmetic expression; short answer confident (-0.05 >= -1)"
    assert escalating.counts == TokenCounts(prompt=PROMPT_TOKENS, answer=4)
    # The client did not ask for log-probabilities: none reach it.
    assert all(choice["logprobs"] is None for chunk in chunks for choice in chunk["choices"])


async def test_an_unsure_short_answer_is_escalated_and_both_attempts_are_counted() -> None:
    engine = Engine(logprob=-2.5)
    escalating, chunks = await run(engine, max_tokens=100)
    short, long = engine.requests
    assert short["chat_template_kwargs"] == {"enable_thinking": False} and short["logprobs"] is True
    assert long["chat_template_kwargs"] == {"enable_thinking": True} and "logprobs" not in long
    assert long["max_tokens"] == 100 - 4  # what the short attempt left of the request's bound
    assert texts(escalating) == ("7*6", "The answer is 42.")
    assert escalating.decision.mode == "long"
    assert escalating.decision.reason == (
        "auto: arithmetic expression; escalated: short answer confidence -2.50 < -1"
    )
    # Both prompts, the short answer and the long attempt's reasoning and answer.
    assert escalating.counts == TokenCounts(prompt=2 * PROMPT_TOKENS, reasoning=3, answer=4 + 4)
    assert not any("42" in str(c) for c in chunks[:3])  # the short answer never reached the client


async def test_an_engine_without_logprobs_escalates() -> None:
    engine = Engine(logprob=None)
    escalating, _ = await run(engine)
    assert len(engine.requests) == 2
    assert escalating.decision.mode == "long"
    assert escalating.decision.reason.endswith("escalated: the short answer had no token log-probabilities")


@pytest.mark.parametrize("logprob", [-0.05, -2.5])
async def test_the_clients_logprobs_are_those_of_the_returned_answer(logprob: float) -> None:
    engine = Engine(logprob=logprob)
    escalating, chunks = await run(engine, logprobs=True)
    answer = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [lp for c in answer for lp in answer_logprobs(c)] == [logprob] * 4
    assert all(request["logprobs"] is True for request in engine.requests)
    assert escalating.decision.mode == ("short" if logprob > -1 else "long")
    assert len(engine.requests) == (1 if logprob > -1 else 2)


async def test_a_short_attempt_that_breaks_off_is_handed_on_with_its_failure() -> None:
    engine = Engine(fail_short=True)
    turn = prepared()
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
        pool = UpstreamPool(["http://engine.test"], client)
        pool.replicas[0].healthy, pool.replicas[0].models = True, frozenset({MODEL})
        escalating = EscalatingRun(turn, -1.0, lambda p: ChatRun(p, pool, client, keep_text=True))
        await escalating.start()
        received = []
        with pytest.raises(Exception, match="before \\[DONE\\]"):
            async for batch in escalating.chunks():
                received += batch
        await escalating.close()
    assert len(engine.requests) == 1 and len(received) == 2
    assert escalating.decision.mode == "short" and escalating.decision.reason.endswith("(failed)")
    assert escalating.counts.answer == 2


def test_answer_logprobs_and_confidence() -> None:
    token = {"token": "4", "logprob": -0.7, "bytes": [52], "top_logprobs": []}
    answer = {"choices": [{"index": 0, "delta": {"content": "4"}, "logprobs": {"content": [token, token]}}]}
    reasoning = {"choices": [{"index": 0, "delta": {"reasoning": "4"}, "logprobs": {"content": [token]}}]}
    assert answer_logprobs(answer) == [-0.7, -0.7]
    assert answer_logprobs(reasoning) == []  # the reasoning is not the answer
    assert answer_logprobs({"choices": [{"index": 0, "delta": {"content": "4"}, "logprobs": None}]}) == []
    assert answer_logprobs((False, b'"4"', b"", None)) == []  # a byte-lane chunk carries none
    assert confidence([-0.01, -2.0, -0.3]) == -2.0
    assert confidence([]) is None


def test_keys_that_may_not_use_short_mode_get_no_short_attempt() -> None:
    long_only = Principal(key_id="k", name="long only", allowed_modes=frozenset({"long"}))
    assert escalation_threshold(prepared(), long_only) is None
    assert escalation_threshold(prepared(), ANONYMOUS) == -1.0
    assert escalation_threshold(prepared(reasoning_mode="long"), ANONYMOUS) is None


def test_the_router_table_of_a_profile() -> None:
    base = {"name": "m", "match": ["m"]}
    assert parse_profile({**base, "router": {"escalate_below": -1}}).escalate_below == -1.0
    assert parse_profile(base).escalate_below is None
    for bad in ({"escalate_below": 0.5}, {"escalate_below": "low"}, {"threshold": -1}):
        with pytest.raises(ProfileError, match="router"):
            parse_profile({**base, "router": bad})
