"""The engine stream reader (`engine/sse.py: sse_data`): the `data:` payloads of an engine stream,
whatever the pieces it arrives in, with LF or CRLF line ends, comments, other fields, and a last
event without its blank line."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.engine.sse import sse_data

PAYLOADS = [b'{"n":1}', b'{"n":2,"text":"a\\nb"}', b'{"n":3}', b"[DONE]"]
LF = b"".join(b"data: " + p + b"\n\n" for p in PAYLOADS)


async def read(body: bytes, piece: int) -> list[bytes]:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    response = httpx.Response(200, content=pieces())
    return [payload async for batch in sse_data(response) for payload in batch]


@pytest.mark.parametrize(
    "body",
    [
        LF,
        LF.replace(b"\n", b"\r\n"),  # CRLF line ends
        LF.replace(b"data: ", b"data:"),  # no space after the colon
        b": keep-alive\n\n" + LF.replace(b'data: {"n":3}', b'event: message\nid: 7\ndata: {"n":3}'),
        LF[:-2],  # the last event without its blank line
        LF[:-2].replace(b"\n", b"\r\n"),
    ],
    ids=["lf", "crlf", "no-space", "comments-and-fields", "no-final-blank", "crlf-no-final-blank"],
)
async def test_every_payload_in_order_whatever_the_pieces(body: bytes) -> None:
    for piece in range(1, len(body) + 1):
        assert await read(body, piece) == PAYLOADS, piece


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
async def test_each_event_is_handed_on_with_the_piece_that_completes_it(line_end: bytes) -> None:
    events = [b"data: " + p + line_end + line_end for p in PAYLOADS]
    consumed = 0

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal consumed
        for event in events:
            consumed += 1
            yield event

    seen = []
    async for batch in sse_data(httpx.Response(200, content=pieces())):
        seen.append((consumed, batch))
    assert seen == [(i + 1, [p]) for i, p in enumerate(PAYLOADS)]
