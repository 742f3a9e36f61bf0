"""The lean engine transport (app/engine/transport.py) behaves like httpx's own: keep-alive, errors,
timeouts, back-pressure, and a response closed early closes its connection (the engine stops)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from app.engine.transport import HIGH_WATER, EngineTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A real TCP server on loopback; yields its origin and a list that counts its connections."""
    connections: list[int] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        srv.close()


@asynccontextmanager
async def client(origin: str, **kwargs: object) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(mounts={origin: EngineTransport()}, **kwargs) as http:  # type: ignore[arg-type]
        yield http


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer(raw: bytes) -> Handler:
    """A server side that reads one request, sends these bytes and closes the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return handler


def chunked(*pieces: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


def echoing(heads: list[bytes]) -> Handler:
    """Answers every request on the connection (keep-alive) with its own body, chunked; records the
    requests' heads."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            heads.append(head)
            writer.write(chunked(b"data: ", body, b"\n\n"))
            await writer.drain()

    return handler


echo_forever = echoing([])


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with server(echo_forever) as (origin, connections), client(origin) as http:
        for i in range(5):
            response = await http.post(f"{origin}/v1/chat/completions", content=b"%d" % i)
            assert (response.status_code, response.content) == (200, b"data: %d\n\n" % i)
            assert response.headers["content-type"] == "text/event-stream"
        assert len(connections) == 1


async def test_content_length_bodies_and_error_statuses_come_through() -> None:
    async def bad_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b'{"error": {"message": "too long", "param": "messages"}}'
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await reader.read()

    async with server(bad_request) as (origin, _), client(origin) as http:
        response = await http.post(f"{origin}/v1/chat/completions", json={"model": "m"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "messages"


async def test_a_body_that_ends_with_the_connection_is_complete() -> None:
    until_close = answer(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
    async with server(until_close) as (origin, _), client(origin) as http:
        response = await http.get(f"{origin}/health")
        assert (response.status_code, response.content) == (200, b"all of it")


async def test_a_response_closed_early_closes_its_connection() -> None:
    engine_saw_hangup = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:  # a model that would think for ever
                writer.write(b"9\r\ndata: x\n\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.005)
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        engine_saw_hangup.set()

    async with server(endless) as (origin, _), client(origin) as http:
        async with http.stream("POST", f"{origin}/v1/chat/completions", content=b"{}") as response:
            async for _ in response.aiter_bytes():
                break
        await asyncio.wait_for(engine_saw_hangup.wait(), 5)


async def test_an_idle_connection_the_engine_closed_is_replaced() -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(chunked(body))  # keep-alive announced, but the engine closes right after
        await writer.drain()

    async with server(one_answer_then_close) as (origin, connections), client(origin) as http:
        for i in range(3):
            response = await http.post(f"{origin}/x", content=b"%d" % i)
            assert response.content == b"%d" % i
        assert len(connections) == 3


async def test_a_reused_connection_closed_in_the_race_is_retried_on_a_new_one() -> None:
    """The engine closes the idle connection just as the next request goes out (its keep-alive
    timeout): the request is sent again on a new connection, not failed."""
    gate = asyncio.Event()

    async def close_on_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(chunked(body))
        await writer.drain()
        if len(seen) == 1:
            await read_request(reader)  # the second request arrives on the same connection...
            gate.set()  # ...and is dropped without an answer

    seen: list[int] = []
    async with server(close_on_second_request) as (origin, connections), client(origin) as http:
        seen.append(1)
        assert (await http.post(f"{origin}/x", content=b"a")).content == b"a"
        seen.append(2)
        assert (await http.post(f"{origin}/x", content=b"b")).content == b"b"
        assert gate.is_set() and len(connections) == 2


async def test_a_fresh_connection_dropped_without_an_answer_is_an_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with server(hang_up) as (origin, connections), client(origin) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await http.post(f"{origin}/x", content=b"{}")
        assert len(connections) == 1  # a new connection is not retried: the engine got the request


async def test_a_body_cut_short_is_an_error_after_what_arrived() -> None:
    cut = answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: x\n\n\r\n")
    async with server(cut) as (origin, _), client(origin) as http:
        got = b""
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            async with http.stream("POST", f"{origin}/x", content=b"{}") as response:
                async for piece in response.aiter_bytes():
                    got += piece
        assert got == b"data: x\n\n"


async def test_connection_refused_and_timeouts_are_httpx_errors() -> None:
    async with server(echo_forever) as (origin, _):
        pass  # closed: nothing listens there any more
    async with client(origin) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"{origin}/x", content=b"{}")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with server(silent) as (origin, _), client(origin, timeout=httpx.Timeout(5, read=0.2)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{origin}/x", content=b"{}")


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 8 * HIGH_WATER // len(piece)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (count * len(piece)))
        for _ in range(count):
            writer.write(piece)
            await writer.drain()  # blocks while the client's socket is paused

    async with server(flood) as (origin, _), client(origin) as http:
        received = 0
        async with http.stream("POST", f"{origin}/x", content=b"{}") as response:
            async for data in response.aiter_raw():
                assert len(data) <= HIGH_WATER + (512 << 10)  # never far past the high-water mark
                received += len(data)
                await asyncio.sleep(0.001)
        assert received == count * len(piece)


async def test_post_sends_the_relay_request_without_an_httpx_client() -> None:
    heads: list[bytes] = []
    transport = EngineTransport()
    timeout = httpx.Timeout(5.0, connect=1.0)
    async with server(echoing(heads)) as (origin, connections):
        for i in range(2):
            response = await transport.post(
                f"{origin}/v1/chat/completions", b'{"n": %d}' % i, {"x-request-id": f"r{i}"}, timeout
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert b"".join([piece async for piece in response.aiter_raw()]) == b'data: {"n": %d}\n\n' % i
        assert len(connections) == 1  # kept alive, as through the client
    port = origin.rsplit(":", 1)[1]
    lines = heads[1].split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert {b"host: 127.0.0.1:" + port.encode(), b"content-length: 8", b"x-request-id: r1"} <= set(lines)

    await transport.aclose()

    fresh = EngineTransport()  # the server is gone: a new connection is refused
    with pytest.raises(httpx.ConnectError):  # the relay's failover relies on httpx's errors
        await fresh.post(f"{origin}/v1/chat/completions", b"{}", {}, timeout)
    with pytest.raises(httpx.UnsupportedProtocol):
        await fresh.post("https://127.0.0.1:1/v1/chat/completions", b"{}", {}, timeout)
