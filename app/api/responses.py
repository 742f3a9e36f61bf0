"""ASGI responses that notice a client leaving, even while nothing is being sent.

Starlette's StreamingResponse only notices a disconnect when a write fails, and leaves the body
generator to the garbage collector. A reasoning model can think for minutes between writes, so
these responses watch `http.disconnect` alongside the work and cancel it at once, then always run
the `finish` callback (metering) to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Finish = Callable[[bool], Awaitable[None]]  # called with disconnected=True/False, exactly once


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _race(work: Coroutine[Any, Any, Any], receive: Receive) -> bool:
    """Run `work` until it ends or the client leaves; True if the client left (work cancelled).

    The work runs in the calling task (no task of its own per request, no `asyncio.wait`); a
    watcher task cancels the caller when `http.disconnect` arrives, and that cancellation, and only
    that one, is turned into the True result."""
    current = asyncio.current_task()
    assert current is not None
    left, running = False, True

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if running and not watcher.cancelled() and watcher.exception() is None:
            left = True
            current.cancel()

    watcher = asyncio.ensure_future(_wait_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        await work
    except asyncio.CancelledError:
        if not left:
            raise
        current.uncancel()
        return True
    finally:
        running = False
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
    return False


# Frames produced but not yet written before the producer waits (backpressure from a slow client).
READ_AHEAD = 256
# Yielded by a frames iterator: continue only once everything before it has been written to the
# client (e.g. before settling a request: a client that left before the end is then seen as gone).
FLUSH = b""


async def _coalesced(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The frames, joined into one write whenever several are ready together.

    A task of its own pulls the frames (reading the engine) while the caller writes: when the
    engine is ahead, everything that arrived while the previous write went out is sent in one go,
    one ASGI send and one socket write per burst instead of per token. Each loop turn waits for the
    producer at least once, so a client's disconnect is noticed even when the engine never waits.
    A `FLUSH` from the frames holds the producer until everything before it has been written.
    The first frame is handed over on its own, so a burst never delays the time to first token.
    """
    ready: list[bytes] = []
    wake, space, written = asyncio.Event(), asyncio.Event(), asyncio.Event()
    space.set()

    async def produce() -> None:
        first = True
        try:
            async for frame in frames:
                if frame is FLUSH or not frame:
                    written.clear()
                    wake.set()
                    await written.wait()
                    continue
                ready.append(frame)
                wake.set()
                if first:  # the first token goes out at once, not after the rest of its burst
                    first = False
                    await asyncio.sleep(0)
                elif len(ready) >= READ_AHEAD:
                    space.clear()
                    await space.wait()
        finally:
            wake.set()

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            if not ready and not producer.done():
                written.set()  # all that was produced has been written (each yield returns after it)
                await wake.wait()
            wake.clear()
            if ready:
                batch = b"".join(ready) if len(ready) > 1 else ready[0]
                ready.clear()
                space.set()
                yield batch
            elif producer.done():
                producer.result()  # the frames' own error, if they failed
                return
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


def _headers(headers: dict[str, str], content_type: bytes) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", content_type)]
    raw.extend((name.lower().encode(), value.encode("latin-1")) for name, value in headers.items())
    return raw


class SSEResponse(Response):
    """Server-sent events from an async iterator of ready-made frames."""

    def __init__(self, frames: AsyncIterator[bytes], finish: Finish, headers: dict[str, str]) -> None:
        self.background = None
        self.frames = frames
        self.finish = finish
        self.extra_headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = True
        try:
            headers = {**self.extra_headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _headers(headers, b"text/event-stream; charset=utf-8"),
                }
            )

            async def pump() -> None:
                async for frames in _coalesced(self.frames):
                    await send({"type": "http.response.body", "body": frames, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})

            disconnected = await _race(pump(), receive)
        except OSError:
            disconnected = True  # a write failed: the client is gone
        finally:
            with contextlib.suppress(Exception):
                await self.frames.aclose()  # type: ignore[attr-defined]
            await asyncio.shield(self.finish(disconnected))


class DeferredJSONResponse(Response):
    """A JSON response computed while watching for disconnect; `produce` returns (status, body, headers)."""

    def __init__(
        self,
        produce: Callable[[], Coroutine[Any, Any, tuple[int, bytes, dict[str, str]]]],
        finish: Finish,
    ) -> None:
        self.background = None
        self.produce = produce
        self.finish = finish
        self.result: tuple[int, bytes, dict[str, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = True
        try:

            async def work() -> None:
                self.result = await self.produce()

            disconnected = await _race(work(), receive)
            if not disconnected and self.result is not None:
                status, body, headers = self.result
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": _headers(headers, b"application/json"),
                    }
                )
                await send({"type": "http.response.body", "body": body})
        except OSError:
            disconnected = True
        finally:
            await asyncio.shield(self.finish(disconnected))
