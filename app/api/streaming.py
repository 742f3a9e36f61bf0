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

from app.protocols.sse import END

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
                # Each frame is handed to the server as it comes: the relay already joins the tokens
                # that arrive together, and the server's `send` waits only when the client is slow
                # (backpressure). A FLUSH therefore holds nothing back: the frames before it are out.
                async for frame in self.frames:
                    if frame is END:
                        await send({"type": "http.response.body", "body": frame, "more_body": False})
                        return
                    if frame:
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
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
