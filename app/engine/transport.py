"""A lean HTTP/1.1 transport for httpx, mounted for the gateway's own engines (the hot path).

httpx's default transport (httpcore + h11) was the largest cost in a profile of the relay: on every
request its pool polls each idle connection's socket, and h11 parses the chunked body in pure Python,
per token. This transport keeps httpx's API (requests, responses, timeouts, exceptions) and does the
work with asyncio protocols and httptools' C parser (already here: uvicorn serves with it).

It is mounted only for the configured engine origins over plain http; anything else (an https engine,
image fetches) goes through httpx's default transport. What it does:
- keep-alive connections per origin, most recently used first; one the engine closed while idle is
  dropped as soon as its end is read, and a request on a reused connection that the engine closed
  before answering is sent once more on a new connection (the keep-alive race every client has);
- a response body that is closed before its end closes the connection: that is how the engine
  learns that the client left, and stops generating;
- the body is read in whatever pieces arrived together (several SSE events at once when the engine
  is ahead), with back-pressure: reading pauses while more than `HIGH_WATER` bytes wait;
- the response head has a deadline of its own (`head_timeout`, the `upstream_header_timeout_s`
  setting), shorter than the read timeout between body pieces: an engine that takes a request and
  never answers it is given up on (httpx.ReadTimeout, a 504 to the client) in seconds, not after
  the long read timeout that a model thinking between tokens needs. `HeadTimeout` gives httpx's
  own transport (https engines) the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable
from functools import lru_cache
from typing import cast

import httptools
import httpx

HIGH_WATER = 1 << 20  # bytes received but not yet read before the socket stops being read
MAX_IDLE = 200  # idle keep-alive connections kept per origin


class _Connection(asyncio.Protocol):
    """One TCP connection and the response being read on it (httptools calls the on_* methods)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.error: httpx.TransportError | None = None
        self._reset()

    def _reset(self) -> None:
        """Ready to read the next response on this connection."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self._until_close = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None  # the reader waiting for news, if any

    def send_request(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self._reset()
        if len(body) < 65536:
            self.transport.write(head + body)  # one segment for the usual small JSON body
        else:
            self.transport.write(head)
            self.transport.write(body)

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, only alike
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response from the engine: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head_done and self._until_close and exc is None:
            self.complete = True  # a body delimited by the end of the connection (no length given)
        if not self.complete:
            if not self.received_any:
                self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
            else:
                self._fail(
                    httpx.RemoteProtocolError("peer closed connection without sending complete message body")
                )
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        names = {name.lower() for name, _ in self.headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self.status = self._parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()  # only valid in the callback (llhttp)
        self._wake()

    # -- used by the transport -------------------------------------------------------------------------

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    async def wait_head(self, timeout: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    async def read(self, timeout: float | None) -> bytes | None:
        """All the body that has arrived (waiting for some), or None at its end."""
        while not self._body:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(timeout)
        piece = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()
        return piece

    async def _wait(self, timeout: float | None) -> None:
        """Until the next event on this connection, at most `timeout` seconds. A bare future and a
        timer handle: the hot path (a wait per piece read), where asyncio.Event and asyncio.timeout
        cost more (docs/performance.md). Callbacks that came before the wait are in the state the
        caller read."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.error is None

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out reading from the engine"))


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, transport: EngineTransport, origin: tuple[str, int], conn: _Connection, timeout: float | None
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: _Connection | None = conn
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while (piece := await conn.read(self._timeout)) is not None:
            yield piece
        self._release()

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport.release(self._origin, conn)

    async def aclose(self) -> None:
        self._release()  # not read to the end: the connection is closed, and the engine stops


class EngineTransport(httpx.AsyncBaseTransport):
    """httpx transport over asyncio + httptools, for http:// engine origins (see the module doc)."""

    def __init__(self, max_idle: int = MAX_IDLE, *, head_timeout: float | None = None) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle
        self._closed = False
        self.head_timeout = head_timeout  # at most this long for a response's head (None: the read timeout)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http" or request.method == "HEAD":
            raise httpx.UnsupportedProtocol(f"EngineTransport serves http:// GET/POST only, not {url}")
        head = _head(request.method.encode(), url.raw_path, request.headers.raw)
        body = await request.aread()
        timeouts = request.extensions.get("timeout", {})
        return await self._exchange(_origin(url), head, body, timeouts)

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: httpx.Timeout
    ) -> httpx.Response:
        """POST `body` to an http:// `url` without building an httpx request: the relay's call, once
        per chat completion, where httpx's client and request objects (URL and header parsing,
        cookies, default headers) cost more than the exchange itself (docs/performance.md).
        `headers`: besides Host and Content-Length, which are written here."""
        origin, path, host = _target(url)
        fields = [(b"host", host), (b"content-length", b"%d" % len(body))]
        fields.extend((name.encode(), value.encode()) for name, value in headers.items())
        return await self._exchange(origin, _head(b"POST", path, fields), body, timeout.as_dict())

    async def _exchange(
        self, origin: tuple[str, int], head: bytes, body: bytes, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        """Send one request and wait for the response's head; the body streams from the response."""
        head_timeout = _shorter(timeouts.get("read"), self.head_timeout)
        for attempt in range(2):
            conn, reused = await self._acquire(origin, timeouts.get("connect"))
            try:
                conn.send_request(head, body)
                await conn.wait_head(head_timeout)
            except httpx.ReadTimeout:
                conn.close()  # the engine learns that the request is abandoned, and drops it
                raise httpx.ReadTimeout(f"no response head within {head_timeout:g} s") from None
            except httpx.RemoteProtocolError:
                conn.close()
                if reused and not conn.received_any and attempt == 0:
                    continue  # the engine had closed this idle connection: once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            return httpx.Response(
                conn.status,
                headers=conn.headers,
                stream=_Body(self, origin, conn, timeouts.get("read")),
                extensions={"http_version": b"HTTP/1.1"},
            )
        raise AssertionError("unreachable")

    async def _acquire(self, origin: tuple[str, int], timeout: float | None) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Connection, origin[0], origin[1])
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {origin[0]}:{origin[1]}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{exc.strerror or exc} ({origin[0]}:{origin[1]})") from exc
        return conn, False

    def release(self, origin: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if conn.reusable and not self._closed and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class HeadTimeout(httpx.AsyncBaseTransport):
    """Another httpx transport with a deadline on the response head (httpx's own has only a read
    timeout, which also bounds the waits between body pieces); see the module doc."""

    def __init__(self, inner: httpx.AsyncBaseTransport, head_timeout: float) -> None:
        self.inner = inner
        self.head_timeout = head_timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        head_timeout = _shorter(timeouts.get("read"), self.head_timeout)
        deadline = asyncio.timeout(head_timeout)
        try:
            async with deadline:
                return await self.inner.handle_async_request(request)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise httpx.ReadTimeout(f"no response head within {head_timeout:g} s", request=request) from None

    async def aclose(self) -> None:
        await self.inner.aclose()


def _shorter(timeout: float | None, other: float | None) -> float | None:
    """The shorter of two timeouts, None being no timeout."""
    if timeout is None:
        return other
    return timeout if other is None else min(timeout, other)


def body_pieces(response: httpx.Response) -> AsyncIterator[bytes]:
    """The response body as it arrives: straight from this transport's connection when the body is
    not encoded (no httpx decoder layers per piece, the hot path), else through httpx."""
    stream = response.stream
    if isinstance(stream, _Body) and response.headers.get("content-encoding", "identity") == "identity":
        return stream.__aiter__()
    return response.aiter_bytes()


def serves(url: str) -> bool:
    """Whether an engine URL goes through this transport: plain http:// (TLS stays with httpx's own)."""
    return url.startswith("http://")


def mount_pattern(url: str) -> str:
    """httpx's mount key for an engine URL: scheme, host and port (httpx drops a default port)."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _origin(url: httpx.URL) -> tuple[str, int]:
    """The key of a connection pool: host and port."""
    return url.host, url.port or 80


@lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, int], bytes, bytes]:
    """(origin, path with query, Host header value) of an http:// URL."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        raise httpx.UnsupportedProtocol(f"EngineTransport serves http:// only, not {url}")
    host = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    return _origin(parsed), parsed.raw_path, host.encode()


def _head(method: bytes, path: bytes, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 request head: the request line, the header fields, the blank line."""
    lines = [method + b" " + path + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"
