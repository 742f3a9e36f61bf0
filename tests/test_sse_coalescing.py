"""Frames that are ready together go out in one write; order, errors, backpressure and cancellation
behave as if each frame were written on its own (api/responses.py: `_coalesced`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.api.responses import FLUSH, READ_AHEAD, _coalesced


async def frames(
    n: int, *, pause_every: int = 0, fail: bool = False, log: list[int] | None = None
) -> AsyncIterator[bytes]:
    for i in range(n):
        if pause_every and i % pause_every == 0:
            await asyncio.sleep(0.002)  # the engine is behind: a real wait between bursts
        if log is not None:
            log.append(i)
        yield b"data: %d\n\n" % i
    if fail:
        raise RuntimeError("engine broke off")


def expected(n: int) -> bytes:
    return b"".join(b"data: %d\n\n" % i for i in range(n))


async def collect(source: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in _coalesced(source)]


async def test_frames_ready_together_are_written_together_in_order() -> None:
    writes = await collect(frames(300))
    assert b"".join(writes) == expected(300)
    assert len(writes) <= 300 // READ_AHEAD + 3  # bursts, not one write per frame


async def test_the_first_frame_is_not_held_back_by_its_burst() -> None:
    writes = await collect(frames(300))
    assert writes[0] == expected(1)  # time to first token: written before the rest is read


async def test_frames_that_arrive_apart_are_written_as_they_come() -> None:
    writes = await collect(frames(40, pause_every=10))
    assert b"".join(writes) == expected(40)
    # The first frame alone, then one burst for the rest of each ten between waits.
    assert writes[0] == expected(1)
    assert len(writes) == 5


async def test_an_error_of_the_frames_reaches_the_writer_after_what_came_before() -> None:
    seen: list[bytes] = []
    with pytest.raises(RuntimeError, match="engine broke off"):
        async for chunk in _coalesced(frames(5, fail=True)):
            seen.append(chunk)
    assert b"".join(seen) == expected(5)


async def test_a_slow_client_stops_the_reading_at_the_read_ahead_limit() -> None:
    produced: list[int] = []
    stream = _coalesced(frames(10 * READ_AHEAD, log=produced))
    first = await anext(stream)
    for _ in range(5):
        await asyncio.sleep(0)  # the client does not read: the producer must stop
    assert len(produced) <= 2 * READ_AHEAD
    rest = [chunk async for chunk in stream]
    assert first + b"".join(rest) == expected(10 * READ_AHEAD)


async def test_closing_the_writer_stops_the_producer() -> None:
    produced: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        i = 0
        while True:
            await asyncio.sleep(0.001)
            produced.append(i)
            i += 1
            yield b"x"

    stream = _coalesced(endless())
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    count = len(produced)
    await asyncio.sleep(0.02)
    assert len(produced) == count


async def test_a_flush_waits_until_everything_before_it_was_written() -> None:
    events: list[str] = []

    async def with_flush() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"%d" % i
        yield FLUSH
        events.append("after flush")  # e.g. settling the request
        yield b"end"

    async for chunk in _coalesced(with_flush()):
        events.append(f"wrote {chunk.decode()}")
        await asyncio.sleep(0.01)  # a slow write
    assert events == ["wrote 0", "wrote 1234", "after flush", "wrote end"]
