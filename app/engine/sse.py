"""The engine's event stream on the wire: the `data:` payloads of its SSE body, and the common chat
chunk recognised on its bytes.

Nearly every chunk of a chat stream is one piece of text in a delta whose other fields are null,
after a head (id, object, created, model) that is the same on every chunk of the stream. Such a chunk
can be handed on without a parse: `match_text` finds its text and usage by comparing bytes, and
declines anything else, which the relay then parses (`relay.ChatRun._normalise`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from app.engine.transport import body_pieces

_CHOICES = b',"choices":['
DELTA_OPEN = b',"choices":[{"index":0,"delta":{'  # a first choice's delta, as engines and we write it
_TEXT_FIELDS = {b"reasoning": True, b"reasoning_content": True, b"content": False}  # is it reasoning?
# The rest of the choice after the delta, as vLLM writes it and as OpenAI-style engines do.
_AFTER_DELTA_VLLM = b',"logprobs":null,"finish_reason":null,"token_ids":null}]'
_AFTER_DELTA = b',"logprobs":null,"finish_reason":null}]'
_TEXT_END_VLLM, _TEXT_END = b'"}' + _AFTER_DELTA_VLLM, b'"}' + _AFTER_DELTA
_USAGE = b',"usage":'
_HEAD_KEYS = {"id", "object", "created", "model"}

# What match_text finds: whether the text is reasoning; the text as a JSON string literal, quotes
# included, as the engine wrote it; the rest of its choice (_AFTER_DELTA_VLLM or _AFTER_DELTA); the
# chunk's usage, if it has one.
TextMatch = tuple[bool, bytes, bytes, dict[str, Any] | None]


def text_opening(payload: bytes) -> bytes | None:
    """How the text chunks of a stream start, from its first chunk: the bytes before the choices
    (when they hold just the stream's id, object, created and model), then the opening of a first
    choice's delta. None when the head holds more: that stream's chunks are all parsed."""
    cut = payload.find(_CHOICES)
    if cut < 0:
        return None
    try:
        head = orjson.loads(payload[:cut] + b"}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(head, dict) or head.keys() != _HEAD_KEYS or head["object"] != "chat.completion.chunk":
        return None
    return payload[:cut] + DELTA_OPEN + b'"'  # up to the first field's name


def match_text(payload: bytes, opening: bytes) -> TextMatch | None:
    """The chunk's text and usage when it is the common kind: `opening`, one text field, the rest of
    the choice null, then the usage or nothing. The text ends at its first quote, which must be
    followed by the end of the delta and choice: a text with an escaped quote, or a delta with more
    fields, fails that check, as does a usage that is not a JSON object (None: parse the chunk)."""
    if not payload.startswith(opening):
        return None
    start = len(opening)
    colon = payload.find(b'":"', start)  # the delta's first field, a string
    reasoning = _TEXT_FIELDS.get(payload[start:colon])
    if reasoning is None:
        return None
    start = colon + 3
    end = payload.find(b'"', start)  # the text is payload[start - 1 : end + 1], quotes included
    if end <= start:
        return None  # no end, or an empty text (the role chunk's)
    if payload.startswith(_TEXT_END_VLLM, end):
        after_delta, rest = _AFTER_DELTA_VLLM, end + len(_TEXT_END_VLLM)
    elif payload.startswith(_TEXT_END, end):
        after_delta, rest = _AFTER_DELTA, end + len(_TEXT_END)
    else:
        return None
    usage = None
    if len(payload) != rest + 1:  # more than the closing brace: the usage, and nothing else
        if not payload.startswith(_USAGE, rest):
            return None
        try:
            usage = orjson.loads(payload[rest + len(_USAGE) : -1])
        except orjson.JSONDecodeError:
            return None  # more than the usage, or invalid: the parsing lane reports it
        if not isinstance(usage, dict):
            return None
    return reasoning, payload[start - 1 : end + 1], after_delta, usage


async def sse_data(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The `data:` payloads of an SSE stream, one list per piece of body that arrived together (a
    piece may end anywhere; the rest comes with the next one). The common event, one `data: ` line
    ended by a blank line, costs one comparison; anything else (CRLF line ends, comments, other
    fields, `data:` without its space, several lines) is read line by line."""
    tail = b""
    async for data in body_pieces(response):
        if tail:
            data = tail + data
        if b"\r" in data:
            lines = data.split(b"\n")
            tail = lines.pop()
            payloads = _data_lines(lines)
        else:
            events = data.split(b"\n\n")
            tail = events.pop()
            payloads = []
            for event in events:
                if event.startswith(b"data: ") and b"\n" not in event:
                    payloads.append(event[6:])
                else:
                    payloads.extend(_data_lines(event.split(b"\n")))
        if payloads:
            yield payloads
    last = _data_lines(tail.split(b"\n"))  # an event the stream ended without a blank line after
    if last:
        yield last


def _data_lines(lines: list[bytes]) -> list[bytes]:
    return [line[5:].strip() for line in lines if line.startswith(b"data:")]


class EngineFailure(Exception):
    """The engine broke off a stream that had already started."""


DRAIN_TIMEOUT_S = 1.0  # reading what follows [DONE]; an engine that lingers loses its connection


def _preview(payload: bytes) -> str:
    return payload[:200].decode(errors="replace")


def engine_chunk(payload: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EngineFailure(f"engine sent invalid JSON: {_preview(payload)!r}") from exc
    if not isinstance(chunk, dict):
        raise EngineFailure(f"engine sent a chunk that is not a JSON object: {_preview(payload)!r}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise EngineFailure(f"engine error: {message}")
    return chunk


async def drain(stream: AsyncIterator[list[bytes]]) -> None:
    """Read the rest of a finished stream (the chunked-encoding end), so its keep-alive connection
    goes back to the pool: httpx closes a connection whose response was not read to the end."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in stream:
                pass
