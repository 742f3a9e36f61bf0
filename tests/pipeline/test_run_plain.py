"""The relay's byte lane (`ChatRun._plain`): a chunk whose delta is one piece of text is recognised on
its bytes and framed for the client without a parse. It must be invisible: for any engine stream, the
client gets the same events, the ledger the same counts, as through the parsing lane; and anything
unusual about a chunk (two fields, a quote, logprobs, a finish, an extra field) sends it down the
parsing lane. The engine here is an httpx mock replaying SSE bytes; `tests/data/vllm-stream.sse` is
a real vLLM 0.32 stream of the bundled model (long mode, continuous usage)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.auth.principal import ANONYMOUS
from app.engine.pool import UpstreamPool
from app.engine.sse import EngineFailure
from app.metering.prices import TokenCounts
from app.pipeline.media import ImageLimits
from app.pipeline.prepare import MediaPolicy, prepare_chat
from app.pipeline.run import ChatRun
from app.profiles.profile import ProfileRegistry
from app.protocols.chat.adapter import ChunkFramer, turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ProfileRegistry.from_dir(ROOT / "models" / "profiles")
MEDIA = MediaPolicy(ImageLimits(max_bytes=1_000_000, max_pixels=10_000_000, max_side=4096), max_images=2)
MODEL = "thinkgate-arith"
VLLM_STREAM = (ROOT / "tests" / "data" / "vllm-stream.sse").read_bytes()
HEAD = {"id": "chatcmpl-e1", "object": "chat.completion.chunk", "created": 1796030476, "model": MODEL}
NULLS = {"logprobs": None, "finish_reason": None, "token_ids": None}


def chunk(delta: dict[str, Any], completion: int, **extra: Any) -> dict[str, Any]:
    """An engine chunk laid out as vLLM writes it (key order included)."""
    choice = {"index": 0, "delta": delta, **NULLS, **extra.pop("choice", {})}
    usage = {"prompt_tokens": 9, "total_tokens": 9 + completion, "completion_tokens": completion}
    return {**HEAD, "choices": [choice], "usage": usage, **extra}


def sse(chunks: list[dict[str, Any] | bytes]) -> bytes:
    payloads = [c if isinstance(c, bytes) else orjson.dumps(c) for c in chunks]
    return b"".join(b"data: " + p + b"\n\n" for p in [*payloads, b"[DONE]"])


def role_chunk() -> dict[str, Any]:
    return {**chunk({"role": "assistant", "content": ""}, 0), "prompt_token_ids": None}


def finish_chunk(completion: int) -> dict[str, Any]:
    return chunk({"content": ""}, completion, choice={"finish_reason": "stop", "stop_reason": None})


class Relayed:
    """What one request through the relay gave: the client's events, the counts, the kept texts."""

    def __init__(self, events: list[dict[str, Any]], run: ChatRun, lanes: str) -> None:
        self.events = events
        self.counts = run.counts
        self.texts = [("".join(s.reasoning), "".join(s.content)) for s in run.choices.values()]
        self.lanes = lanes  # per chunk relayed: "b" took the byte lane, "p" was parsed
        self.plain = lanes.count("b")


async def relay(
    body: bytes,
    *,
    piece: int | None = None,
    byte_lane: bool = True,
    hide_reasoning: bool = False,
    per_chunk_usage: bool = False,
    keep_text: bool = True,
    monkeypatch: pytest.MonkeyPatch,
) -> Relayed:
    """Run one streamed request against an engine replaying `body` (in pieces of `piece` bytes)."""

    async def pieces() -> AsyncIterator[bytes]:
        size = piece or len(body)
        for start in range(0, len(body), size):
            yield body[start : start + size]

    def engine(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())

    with monkeypatch.context() as patch:
        if not byte_lane:
            patch.setattr(ChatRun, "_plain", lambda self, payload: None)
        async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as client:
            pool = UpstreamPool(["http://engine.test"], client)
            pool.replicas[0].healthy, pool.replicas[0].models = True, frozenset({MODEL})
            request = ChatCompletionRequest.model_validate(
                {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "What is 7 + 5?"}]}
            )
            prepared = prepare_chat(turn_from_chat(request), ANONYMOUS, PROFILES, MEDIA)
            run = ChatRun(prepared, pool, client, keep_text=keep_text, counts_per_chunk=per_chunk_usage)
            fixed = {"id": "chatcmpl-ours", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
            framer = ChunkFramer(
                {**fixed, "reasoning_mode": "long"},
                hide_reasoning=hide_reasoning,
                usage=_usage if per_chunk_usage else None,
            )
            await run.start()
            frames, lanes = b"", ""
            async for batch in run.chunks():
                lanes += "".join("b" if isinstance(c, tuple) else "p" for c in batch)
                frames += framer.frames(batch)
            await run.close()
    assert frames.endswith(b"\n\n")
    events = [orjson.loads(frame.removeprefix(b"data: ")) for frame in frames[:-2].split(b"\n\n")]
    return Relayed(events, run, lanes)


def _usage(counts: TokenCounts) -> dict[str, int]:
    return {"completion_tokens": counts.completion, "reasoning_tokens": counts.reasoning}


def assert_same(fast: Relayed, slow: Relayed) -> None:
    assert slow.plain == 0
    assert fast.events == slow.events
    assert fast.counts == slow.counts
    assert fast.texts == slow.texts


def options() -> Iterator[dict[str, Any]]:
    for hide_reasoning in (False, True):
        for per_chunk_usage in (False, True):
            for piece in (None, 37):  # all in one read; pieces that end mid-event
                yield {"hide_reasoning": hide_reasoning, "per_chunk_usage": per_chunk_usage, "piece": piece}


@pytest.mark.parametrize("option", list(options()), ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
async def test_a_real_vllm_stream_takes_the_byte_lane_unchanged(
    option: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = await relay(VLLM_STREAM, monkeypatch=monkeypatch, **option)
    slow = await relay(VLLM_STREAM, byte_lane=False, monkeypatch=monkeypatch, **option)
    assert_same(fast, slow)
    # The role chunk, 59 reasoning texts, the two separator newlines, 7 answer texts, the finish,
    # the usage: all the texts but the separator take the byte lane.
    assert fast.plain == 59 + 7
    assert fast.counts.reasoning == 59 and fast.counts.answer == 11 and fast.counts.prompt == 18
    reasoning, content = fast.texts[0]
    assert content == "The answer is 12."
    assert reasoning.startswith("7+5\n") and reasoning.endswith("checked\n")
    if option["per_chunk_usage"]:
        tokens = [e for e in fast.events if e["choices"] and "usage" in e]
        completion = [e["usage"]["completion_tokens"] for e in tokens]
        assert completion == sorted(completion) and completion[-1] == 70


# Chunks the byte lane must leave to the parsing lane, each with why.
UNUSUAL = {
    "two fields": chunk({"reasoning": "a", "content": "b"}, 3),
    "an escaped quote": chunk({"reasoning": 'say "hi"'}, 4),
    "the lane's own end marker, quoted": chunk({"reasoning": '"},"logprobs":null,"finish_reason":null'}, 5),
    "logprobs": chunk({"reasoning": "x"}, 6, choice={"logprobs": {"content": []}}),
    "a finish with text": chunk({"content": "!"}, 7, choice={"finish_reason": "length"}),
    "a field after the usage": chunk({"reasoning": "y"}, 8, system_fingerprint="fp"),
    "another stream's id": {**chunk({"reasoning": "z"}, 9), "id": "chatcmpl-other"},
    "a tool call": chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, 10),
    "an empty text": chunk({"reasoning": ""}, 11),
    "a second choice": {**chunk({"content": "w"}, 12), "choices": [{"index": 1, "delta": {"content": "w"}}]},
}


@pytest.mark.parametrize("name", list(UNUSUAL))
async def test_an_unusual_chunk_takes_the_parsing_lane(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    usual = [chunk({"reasoning": "r"}, 1), chunk({"reasoning_content": "\u00e9\u2028\\"}, 2)]
    after = [chunk({"reasoning": "s"}, 13), chunk({"content": "\n\nok"}, 14), chunk({"content": " done"}, 15)]
    body = sse([role_chunk(), *usual, UNUSUAL[name], *after, finish_chunk(15)])
    for option in options():
        fast = await relay(body, monkeypatch=monkeypatch, **option)
        slow = await relay(body, byte_lane=False, monkeypatch=monkeypatch, **option)
        assert_same(fast, slow)
        # The role chunk is parsed, the usual ones around the unusual one take the byte lane (but
        # the answer's first text, which may start with the separator, unless the answer began).
        assert fast.lanes[:5] == "pbbpb" and fast.lanes.endswith("bp"), (name, option)
    reasoning, content = fast.texts[0]
    assert reasoning.startswith("r\u00e9\u2028\\") and content.endswith("ok done")


async def test_raw_output_is_left_to_the_think_splitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine without a reasoning parser sends the think tags in `content`: every text chunk is
    parsed, so that the splitter sees it."""
    tokens = ["<think>", "7+5", "\n", "=12", "</think>", "\n\n", "The answer", " is 12."]
    chunks = [chunk({"content": token}, i + 1) for i, token in enumerate(tokens)]
    body = sse([role_chunk(), *chunks, finish_chunk(len(tokens))])
    fast = await relay(body, monkeypatch=monkeypatch)
    slow = await relay(body, byte_lane=False, monkeypatch=monkeypatch)
    assert_same(fast, slow)
    assert fast.plain == 0
    assert fast.texts == [("7+5\n=12", "The answer is 12.")]
    assert fast.counts.completion == len(tokens) and fast.counts.answer >= 2


async def test_an_unreadable_usage_fails_the_stream_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte lane reads each usage: one that is not JSON goes to the parsing lane, which reports
    the engine's fault after relaying what came before it."""
    broken = orjson.dumps(chunk({"reasoning": "b"}, 2)).replace(b'_tokens":2', b'_tokens":}')
    chunks = [chunk({"reasoning": "a"}, 1), broken, chunk({"content": "c"}, 3)]
    body = sse([role_chunk(), *chunks, finish_chunk(4)])
    with pytest.raises(EngineFailure, match="invalid JSON"):
        await relay(body, monkeypatch=monkeypatch)


def random_text(rng: random.Random) -> str:
    alphabet = ["a", " ", "7", '"', "\\", "\n", "\t", "}", ",", ":", "{", "é", "✓", "\u2028", "\x00", "😀"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))


def random_chunk(rng: random.Random, completion: int) -> dict[str, Any] | bytes:
    """A chunk an engine might send: mostly the common kind, sometimes anything else."""
    roll = rng.random()
    field = rng.choice(["reasoning", "reasoning_content", "content"])
    if roll < 0.6:
        return chunk({field: random_text(rng)}, completion)
    if roll < 0.7:
        return chunk({"reasoning": random_text(rng), "content": random_text(rng)}, completion)
    if roll < 0.8:
        return chunk({field: random_text(rng)}, completion, choice={"token_ids": [1, 2]})
    if roll < 0.9:  # the OpenAI layout: no token_ids, sometimes no usage
        plain = {**HEAD, "choices": [{"index": 0, "delta": {field: random_text(rng)}, "logprobs": None,
                                      "finish_reason": None}]}  # fmt: skip
        if rng.random() < 0.5:
            plain["usage"] = {
                "prompt_tokens": 9,
                "total_tokens": 9 + completion,
                "completion_tokens": completion,
            }
        return plain
    return orjson.dumps(chunk({field: random_text(rng)}, completion)).replace(b"{", b"{ ", 1)  # spacing


async def test_random_streams_look_the_same_through_both_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    took_the_byte_lane = 0
    for seed in range(40):
        rng = random.Random(seed)
        chunks = [random_chunk(rng, i + 1) for i in range(rng.randint(1, 30))]
        body = sse([role_chunk(), *chunks, finish_chunk(len(chunks) + 1)])
        option = rng.choice(list(options()))
        fast = await relay(body, monkeypatch=monkeypatch, **option)
        slow = await relay(body, byte_lane=False, monkeypatch=monkeypatch, **option)
        assert_same(fast, slow)
        took_the_byte_lane += fast.plain
    assert took_the_byte_lane > 100  # the common chunks among them did take it


@pytest.mark.parametrize(
    ("reported", "counted"),
    [(b"-5", 0), (b'"12"', 0), (b"3.7", 3), (b"1e300", 2**31 - 1), (b"1180591620717411303424", 2**31 - 1),
     (b"true", 0), (b"null", 0)],
)  # fmt: skip
async def test_garbage_counts_from_the_engine_are_clamped_to_what_the_ledger_holds(
    reported: bytes, counted: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken engine's usage must not break the settlement (a 500, or a PostgreSQL integer
    overflow that leaves the record open): counts are clamped to the columns' range, and logged."""
    body = sse([role_chunk(), chunk({"content": "7"}, 1), finish_chunk(1)])
    relayed = await relay(
        body.replace(b'"prompt_tokens":9', b'"prompt_tokens":' + reported), monkeypatch=monkeypatch
    )
    assert relayed.counts.prompt == counted
    assert relayed.counts.completion == 1
