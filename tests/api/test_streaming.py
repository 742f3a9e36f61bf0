"""The streaming response (api/streaming.py: `SSEResponse`): frames go out as they come, the last one
with the end of the body, a FLUSH holds nothing back, a slow client holds the reading back, and a
client that leaves mid-thought is noticed at once and settled exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from app.api.streaming import SSEResponse
from app.protocols.sse import END, FLUSH


class Client:
    """An ASGI server's side of one response: records the messages, can be slow, can leave."""

    def __init__(self, send_delay: float = 0.0) -> None:
        self.messages: list[dict[str, Any]] = []
        self.send_delay = send_delay
        self.gone = asyncio.Event()
        self.finished: list[bool] = []

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        self.messages.append(message)

    async def finish(self, disconnected: bool) -> None:
        self.finished.append(disconnected)

    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.messages if m["type"] == "http.response.body"]


async def respond(client: Client, frames: AsyncIterator[bytes]) -> None:
    response = SSEResponse(frames, client.finish, {"x-request-id": "r1"})
    await response({"type": "http"}, client.receive, client.send)


async def test_frames_go_out_as_they_come_and_the_last_with_the_end_of_the_body() -> None:
    client = Client()
    sent_when_resumed: list[int] = []

    async def frames() -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"data: %d\n\n" % i
            sent_when_resumed.append(len(client.bodies()))
        yield END

    await respond(client, frames())
    assert client.messages[0]["type"] == "http.response.start"
    assert (b"x-request-id", b"r1") in client.messages[0]["headers"]
    frames_sent = [(b"data: %d\n\n" % i, True) for i in range(3)]
    assert client.bodies() == [*frames_sent, (END, False)]
    assert sent_when_resumed == [1, 2, 3]  # nothing is held back waiting for the next frame
    assert client.finished == [False]


async def test_a_stream_without_the_end_marker_still_ends_the_body() -> None:
    client = Client()

    async def frames() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"

    await respond(client, frames())
    assert client.bodies() == [(b"data: x\n\n", True), (b"", False)]
    assert client.finished == [False]


async def test_a_flush_resumes_only_after_everything_before_it_was_sent() -> None:
    client = Client(send_delay=0.005)  # a slow client
    seen_at_flush: list[int] = []

    async def frames() -> AsyncIterator[bytes]:
        for i in range(4):
            yield b"%d" % i
        yield FLUSH
        seen_at_flush.append(len(client.bodies()))  # e.g. settling the request
        yield END

    await respond(client, frames())
    assert seen_at_flush == [4]
    assert b"".join(body for body, _ in client.bodies()) == b"0123" + END


async def test_a_slow_client_holds_the_reading_back() -> None:
    client = Client(send_delay=0.002)
    produced_ahead: list[int] = []

    async def frames() -> AsyncIterator[bytes]:
        for i in range(20):
            produced_ahead.append(i + 1 - len(client.bodies()))
            yield b"%d" % i
        yield END

    await respond(client, frames())
    assert max(produced_ahead) <= 1  # never more than the frame being sent


async def test_a_client_leaving_mid_thought_is_noticed_at_once_and_settled_once() -> None:
    client = Client()
    closed = asyncio.Event()

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            await asyncio.sleep(60)  # a long think: nothing to write
            yield b"data: never\n\n"
        finally:
            closed.set()

    task = asyncio.create_task(respond(client, frames()))
    await asyncio.sleep(0.01)
    client.gone.set()
    await asyncio.wait_for(task, timeout=2)
    assert closed.is_set()  # the work was stopped, not left to the garbage collector
    assert client.bodies() == [(b"data: first\n\n", True)]
    assert client.finished == [True]
