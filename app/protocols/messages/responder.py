"""The Messages API front door, response side: the pipeline's chunks, counts and outcome become an
Anthropic `message` object, or its stream of events (message_start, ping, content_block_start /
delta / stop, message_delta, message_stop).

The pipeline's chunks are OpenAI chat chunks: a `Plain` (the engine's text bytes, a JSON string
literal, framed here without parsing) or a dict whose delta holds `reasoning_content`, `content` or
`tool_calls`. Reasoning becomes a `thinking` block signed by the gateway (`signing.py`), text a
`text` block, each tool call a `tool_use` block whose arguments stream as `input_json_delta`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.core.errors import APIError, anthropic_body
from app.metering.prices import TokenCounts, format_usd, to_usd
from app.pipeline.completion import Completion
from app.pipeline.run import Chunk
from app.protocols.messages.signing import ThinkingSigner
from app.protocols.messages.types import MessagesRequest
from app.protocols.sse import FLUSH


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stop_reason(
    finish: str | None, matched: object, stops: list[str] | None, calls: bool
) -> tuple[str, str | None]:
    """Anthropic's stop_reason (and stop_sequence) for the engine's finish_reason and vLLM's stop_reason."""
    if finish == "length":
        return "max_tokens", None
    if calls or finish == "tool_calls":
        return "tool_use", None
    if isinstance(matched, str) and stops and matched in stops:
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class MessagesResponder:
    def __init__(self, completion: Completion, request: MessagesRequest, signer: ThinkingSigner) -> None:
        self.completion = completion
        self.request = request
        self.signer = signer
        self.finish_reason: str | None = None
        self.matched: object = None  # vLLM's stop_reason: the stop string that ended the answer
        completion.stored_response = lambda: orjson.dumps(self.body()).decode()

    def usage(self, counts: TokenCounts | None = None) -> dict[str, Any]:
        counts = self.completion.counts if counts is None else counts
        return {
            "input_tokens": counts.prompt - counts.cached,
            "output_tokens": counts.completion,
            "cache_read_input_tokens": counts.cached,
            "cache_creation_input_tokens": 0,
            "output_tokens_details": {"thinking_tokens": counts.reasoning},
            "cost": to_usd(self.completion.cost(counts)),
        }

    def headers(self) -> dict[str, str]:
        decision = self.completion.decision
        return {
            "request-id": self.completion.request_id,
            "x-request-id": self.completion.request_id,
            "x-reasoning-mode": decision.mode,
            "x-reasoning-mode-reason": decision.reason,
            **self.completion.notices,  # what the pipeline changed (tools dropped, output bound fitted)
        }

    def _message(self) -> dict[str, Any]:
        decision = self.completion.decision
        return {
            "id": "msg_" + self.completion.request_id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "reasoning_mode": decision.mode,
            "reasoning_mode_reason": decision.reason,
        }

    def _observe(self, chunk: Chunk) -> None:
        if isinstance(chunk, dict):
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                    self.matched = choice.get("stop_reason")

    def _stop(self, calls: bool) -> tuple[str, str | None]:
        run = self.completion.run
        assert run is not None
        finish = self.finish_reason or run.finish_reason()
        return stop_reason(finish, self.matched, self.request.stop_sequences, calls)

    def body(self) -> dict[str, Any]:
        run = self.completion.run
        assert run is not None
        state = run.choices.get(0)
        content: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        if state is not None:
            thinking = "".join(state.reasoning)
            if thinking:
                content.append(
                    {"type": "thinking", "thinking": thinking, "signature": self.signer.sign(thinking)}
                )
            text = "".join(state.content)
            if text:
                content.append({"type": "text", "text": text})
            calls = [state.tool_calls[i] for i in sorted(state.tool_calls)]
            for call in calls:
                function = call.get("function") or {}
                content.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                        "name": function.get("name", ""),
                        "input": tool_input(function.get("arguments", "")),
                    }
                )
        reason, sequence = self._stop(bool(calls))
        return {
            **self._message(),
            "content": content,
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": self.usage(),
        }

    async def complete(self) -> tuple[int, bytes, dict[str, str]]:
        completion = self.completion
        headers = self.headers()
        async for batch in completion.chunks():
            for chunk in batch:
                self._observe(chunk)
        await completion.finish(disconnected=False)
        failure: APIError | None = completion.failure
        if failure is not None:
            return failure.status, orjson.dumps(anthropic_body(failure)), {**headers, **failure.headers}
        headers["x-usage-cost"] = format_usd(completion.cost())
        return 200, orjson.dumps(self.body()), headers

    async def frames(self) -> AsyncIterator[bytes]:
        completion = self.completion
        blocks = BlockWriter(self.signer)
        started = False
        async for batch in completion.chunks():
            out = []
            if not started:
                started = True
                out.append(self._start())
            for chunk in batch:
                self._observe(chunk)
                out.append(blocks.frames(chunk))
            yield b"".join(out)
        tail = [] if started else [self._start()]
        tail.append(blocks.close())
        if completion.failure is not None:
            tail.append(event("error", anthropic_body(completion.failure)))
        yield b"".join(tail)
        yield FLUSH  # settle once the client has everything so far (one that left is `aborted`)
        await completion.finish(disconnected=False)
        if completion.failure is None:
            reason, sequence = self._stop(blocks.had_tool_use)
            delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                     "usage": self.usage()}  # fmt: skip
            yield event("message_delta", delta) + event("message_stop", {"type": "message_stop"})

    def _start(self) -> bytes:
        usage = self.usage()
        del usage["cost"]  # not final yet: the cost comes with message_delta's usage, once settled
        message = {**self._message(), "usage": usage}
        return event("message_start", {"type": "message_start", "message": message}) + event(
            "ping", {"type": "ping"}
        )


class BlockWriter:
    """The content blocks of a stream, opened and closed as the kind of delta changes."""

    def __init__(self, signer: ThinkingSigner) -> None:
        self.signer = signer
        self.index = -1
        self.kind: str | None = None  # the open block's type
        self.tool_index: int | None = None  # the engine's index of the open tool call
        self.thinking: list[str] = []
        self.had_tool_use = False

    def _open(self, block: dict[str, Any]) -> bytes:
        closed = self.close()
        self.index += 1
        self.kind = block["type"]
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return closed + event("content_block_start", start)

    def close(self) -> bytes:
        if self.kind is None:
            return b""
        out = b""
        if self.kind == "thinking":
            signature = self.signer.sign("".join(self.thinking))
            self.thinking = []
            delta = {"type": "signature_delta", "signature": signature}
            out = event(
                "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
            )
        self.kind = self.tool_index = None
        return out + event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, kind: str, field: str, text: bytes) -> bytes:
        """A delta framed around a JSON string literal (the engine's bytes, or ours)."""
        head = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":'
        return head % self.index + b'{"type":"%s","%s":' % (kind.encode(), field.encode()) + text + b"}}\n\n"

    def frames(self, chunk: Chunk) -> bytes:
        if isinstance(chunk, tuple):  # a Plain
            return self._text(chunk[0], chunk[1], None)
        out = b""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if thought := delta.get("reasoning_content"):
                out += self._text(True, orjson.dumps(thought), thought)
            if content := delta.get("content"):
                out += self._text(False, orjson.dumps(content), content)
            for fragment in delta.get("tool_calls") or ():
                out += self._tool(fragment)
        return out

    def _text(self, reasoning: bool, literal: bytes, text: str | None) -> bytes:
        """A text or thinking delta; `text` is `literal` decoded, None when not yet (a Plain's)."""
        out = b""
        if reasoning:
            if self.kind != "thinking":
                out = self._open({"type": "thinking", "thinking": "", "signature": ""})
            self.thinking.append(orjson.loads(literal) if text is None else text)  # what is signed
            return out + self._delta("thinking_delta", "thinking", literal)
        if self.kind != "text":
            out = self._open({"type": "text", "text": ""})
        return out + self._delta("text_delta", "text", literal)

    def _tool(self, fragment: dict[str, Any]) -> bytes:
        out = b""
        index = int(fragment.get("index") or 0)
        function = fragment.get("function") or {}
        if self.kind != "tool_use" or self.tool_index != index:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": fragment.get("id") or "toolu_" + secrets.token_hex(12),
                "name": function.get("name") or "",
                "input": {},
            }
            out = self._open(block)
            self.tool_index = index
            self.had_tool_use = True
        if arguments := function.get("arguments"):
            out += self._delta("input_json_delta", "partial_json", orjson.dumps(arguments))
        return out


async def replayed_events(stored: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stored `message` (an Idempotency-Key retry) as a stream of events."""
    start = {**stored, "content": [], "stop_reason": None, "stop_sequence": None}
    yield event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(stored.get("content") or []):
        kind = block.get("type")
        empty: dict[str, dict[str, Any]] = {
            "thinking": {"thinking": "", "signature": ""},
            "text": {"text": ""},
            "tool_use": {"input": {}},
        }
        opening = {**block, **empty.get(kind, {})}
        yield event(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}
        )
        deltas: list[dict[str, Any]] = []
        if kind == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")},
                      {"type": "signature_delta", "signature": block.get("signature", "")}]  # fmt: skip
        elif kind == "text":
            deltas = [{"type": "text_delta", "text": block.get("text", "")}]
        elif kind == "tool_use":
            deltas = [
                {"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input", {})).decode()}
            ]
        for delta in deltas:
            yield event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            )
        yield event("content_block_stop", {"type": "content_block_stop", "index": index})
    final = {"stop_reason": stored.get("stop_reason"), "stop_sequence": stored.get("stop_sequence")}
    yield event("message_delta", {"type": "message_delta", "delta": final, "usage": stored.get("usage")})
    yield event("message_stop", {"type": "message_stop"})
