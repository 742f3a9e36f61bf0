"""Item 7, an engine that takes a request and never answers: a 504 with Retry-After, well before the
600 s read timeout, settled in the ledger; and one that stalls mid-stream: an error, never a 500.

The upstream here is a scripted one (`ScriptedEngine`, a few lines of asyncio): it lists its model on
`GET /v1/models` like vLLM, so the pool sees a healthy replica, then never answers a POST, or sends
the head and one chunk and goes quiet. A real engine cannot be made to produce these faults on cue;
what the gateway does with them is what is tested, through a real `thinkgate serve` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from app.engine.transport import EngineTransport, HeadTimeout
from tests.support import GatewayProcess, expected_cost, free_port, query_db, start_gateway, wait_http_ok

MODEL = "stuck-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "What is 1 + 2?"}], "max_tokens": 5}
HEADER_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 2.0
CHUNK = {
    "id": "chatcmpl-stall",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": MODEL,
    "choices": [{"index": 0, "delta": {"content": " three"}, "logprobs": None, "finish_reason": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
}


class ScriptedEngine:
    """An HTTP/1.1 server on a thread of its own: `GET /v1/models` answered properly, every POST either
    never answered (`stall_after_head=False`) or answered with a head and one SSE chunk, then silence.
    `posts` counts the POSTs received, `abandoned` those whose connection the client closed."""

    def __init__(self, *, stall_after_head: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stall_after_head = stall_after_head
        self.posts = 0
        self.abandoned = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *fields = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                length = 0
                for field in fields:
                    name, _, value = field.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                if method == "GET" and path == "/v1/models":
                    body = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                    continue
                self.posts += 1
                if self.stall_after_head and path == "/v1/chat/completions":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"transfer-encoding: chunked\r\n\r\n"
                    )
                    event = b"data: " + orjson.dumps(CHUNK) + b"\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                await reader.read()  # nothing more is sent: wait for the client to give up
                self.abandoned += 1
                return
        writer.close()

    def __enter__(self) -> ScriptedEngine:
        self.thread.start()

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _gateway(tmp_path: Path, engine: ScriptedEngine) -> contextlib.AbstractContextManager[GatewayProcess]:
    return start_gateway(
        tmp_path,
        upstreams=[engine.url],
        env={
            "THINKGATE_UPSTREAM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "THINKGATE_UPSTREAM_TIMEOUT_S": str(READ_TIMEOUT_S),
        },
    )


def _ledger(gateway: GatewayProcess, key_name: str) -> tuple[list[dict[str, object]], int]:
    """The key's usage records and its reserved micro-USD, once nothing of it is open any more."""
    deadline = time.monotonic() + 10
    while True:
        [key] = query_db(
            gateway.database_url, "SELECT id, reserved_micros FROM api_keys WHERE name = :n", n=key_name
        )
        records = query_db(gateway.database_url, "SELECT * FROM usage_records WHERE key_id = :k", k=key["id"])
        settled = all(record["status"] != "open" for record in records) and key["reserved_micros"] == 0
        if settled or time.monotonic() > deadline:
            return records, int(str(key["reserved_micros"]))
        time.sleep(0.1)


@pytest.fixture()
def silent_engine() -> Iterator[ScriptedEngine]:
    with ScriptedEngine() as engine:
        yield engine


@pytest.mark.slow
def test_an_engine_that_never_answers_is_a_504_with_retry_after(
    silent_engine: ScriptedEngine, tmp_path: Path
) -> None:
    with _gateway(tmp_path, silent_engine) as gateway:
        headers = {"Authorization": f"Bearer {gateway.create_key('stuck', '--budget', '5')}"}
        ids = []
        for stream in (False, True):
            wait_http_ok(
                f"{gateway.base_url}/ready"
            )  # the replica is drained after a timeout, then probed back
            started = time.monotonic()
            response = httpx.post(
                f"{gateway.base_url}/v1/chat/completions",
                json={**BODY, "stream": stream},
                headers=headers,
                timeout=60,
            )
            elapsed = time.monotonic() - started
            assert response.status_code == 504, response.text
            assert HEADER_TIMEOUT_S <= elapsed < HEADER_TIMEOUT_S + 5, elapsed
            assert int(response.headers["retry-after"]) >= 1
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("timeout", "engine_timeout")
            assert set(error) == {"message", "type", "param", "code"}
            assert "127.0.0.1" not in error["message"]  # nothing about the engine's address
            ids.append(response.headers.get("x-request-id"))

        wait_http_ok(f"{gateway.base_url}/ready")
        count = httpx.post(
            f"{gateway.base_url}/v1/tokenizers/estimate-token-count", json=BODY, headers=headers, timeout=60
        )
        assert count.status_code == 504, count.text
        assert count.headers["retry-after"] and count.json()["error"]["code"] == "engine_timeout"

        records, reserved = _ledger(gateway, "stuck")
        assert reserved == 0
        assert len(records) == 2, records
        for record in records:
            assert record["status"] == "engine_error", record
            assert record["cost_micros"] == 0 and record["completion_tokens"] == 0, record
            assert "did not answer in time" in str(record["error"])
        # The gateway gave up on each request by closing its connection: that is what stops an engine.
        deadline = time.monotonic() + 5
        while silent_engine.abandoned < silent_engine.posts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert silent_engine.posts == 3 and silent_engine.abandoned == 3
        assert "unhandled error" not in gateway.log()


@pytest.mark.slow
def test_an_engine_that_stalls_mid_stream_is_an_error_not_a_500(tmp_path: Path) -> None:
    with ScriptedEngine(stall_after_head=True) as engine, _gateway(tmp_path, engine) as gateway:
        headers = {"Authorization": f"Bearer {gateway.create_key('stall', '--budget', '5')}"}
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json=BODY, headers=headers, timeout=60
        )
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "engine_error"

        wait_http_ok(f"{gateway.base_url}/ready")
        body = {**BODY, "stream": True}
        with httpx.stream(
            "POST", f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as streamed:
            assert streamed.status_code == 200
            events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == " three"
        assert orjson.loads(events[-2])["error"]["code"] == "engine_error"

        records, reserved = _ledger(gateway, "stall")
        assert reserved == 0 and len(records) == 2
        for record in records:
            # Billed for what the engine produced before it went quiet, as any engine failure.
            assert record["status"] == "engine_error" and record["completion_tokens"] == 1, record
            assert record["prompt_tokens"] == 12 and record["cost_micros"] == expected_cost(record) > 0
        assert "unhandled error" not in gateway.log()


def test_the_engine_transport_gives_up_on_a_missing_head(silent_engine: ScriptedEngine) -> None:
    """In process: the head deadline applies, however long the read timeout; the body's reads are not
    bound by it (the scripted engine's head comes at once, then one chunk and silence)."""

    async def go() -> None:
        transport = EngineTransport(head_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout, match=r"no response head within 0\.3 s"):
            await transport.post(
                f"{silent_engine.url}/v1/chat/completions", b"{}", {}, httpx.Timeout(600.0, connect=5.0)
            )
        assert time.monotonic() - started < 3
        await transport.aclose()

    asyncio.run(go())


@pytest.mark.slow
def test_head_timeout_wraps_httpx_own_transport() -> None:
    """The https engines' path: httpx's transport, wrapped, gets the same deadline on the head only."""

    class Silent(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    class SlowBody(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            class Stream(httpx.AsyncByteStream):
                async def __aiter__(self) -> AsyncIterator[bytes]:
                    await asyncio.sleep(0.5)  # longer than the head deadline: allowed, it is the body
                    yield b"late"

            return httpx.Response(200, stream=Stream())

    async def go() -> None:
        async with httpx.AsyncClient(transport=HeadTimeout(Silent(), 0.2)) as client:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match=r"no response head within 0\.2 s"):
                await client.get("https://engine.invalid/v1/models", timeout=600)
            assert time.monotonic() - started < 2
        async with httpx.AsyncClient(transport=HeadTimeout(SlowBody(), 0.2)) as client:
            response = await client.get("https://engine.invalid/v1/models", timeout=600)
            assert response.content == b"late"

    asyncio.run(go())
