"""The gateway when things go wrong: no engine, an engine that dies mid-stream, unsafe settings."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Engine, GatewayProcess, free_port, start_gateway, usage_records

ROOT = Path(__file__).resolve().parents[2]
BODY = {
    "model": "thinkgate-arith",
    "messages": [{"role": "user", "content": "What is 1 + 2?"}],
    "max_tokens": 5,
}


class CuttingProxy:
    """A TCP forwarder to the engine that drops every connection after `cut_after` response bytes."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.cut_after = cut_after
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                if limit is not None and sent + len(data) > limit:
                    writer.write(data[: limit - sent])
                    break
                writer.write(data)
                sent += len(data)
                await writer.drain()
        writer.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pipe(client_reader, engine_writer, None),
            self._pipe(engine_reader, client_writer, self.cut_after),
        )

    def __enter__(self) -> CuttingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop
        ).result()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture()
def dead_upstream_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    with start_gateway(tmp_path, upstreams=[f"http://127.0.0.1:{free_port()}"], wait_ready=False) as gateway:
        gateway.api_key = gateway.create_key("t")
        yield gateway


@pytest.mark.slow
def test_no_engine_means_503_with_retry_after(dead_upstream_gateway: GatewayProcess) -> None:
    gateway = dead_upstream_gateway
    ready = httpx.get(f"{gateway.base_url}/ready", headers={"Authorization": f"Bearer {gateway.admin_key}"})
    assert ready.status_code == 503 and ready.headers["retry-after"]
    assert ready.json()["replicas"][0]["healthy"] is False  # the replicas: for the admin key only
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {gateway.api_key}"},
    )
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert response.json()["error"]["code"] == "engine_unavailable"
    assert httpx.get(f"{gateway.base_url}/health").status_code == 200


@pytest.mark.engine
def test_engine_dying_mid_stream_ends_with_an_error_event(engine: Engine, tmp_path: Path) -> None:
    engine_port = int(engine.url.rsplit(":", 1)[1])
    # Let the probes and the first chunks through, then cut: ~3 kB is a few SSE chunks.
    with CuttingProxy(engine_port, cut_after=3000) as proxy, start_gateway(
        tmp_path, upstreams=[f"http://127.0.0.1:{proxy.port}"]
    ) as gateway:  # fmt: skip
        key = gateway.create_key("t")
        body = {**BODY, "max_tokens": 300, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as response:  # fmt: skip
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = httpx.Response(200, content=events[-2]).json()["error"]
        assert error["code"] == "engine_error" and "mid-stream" in error["message"]
        [record] = usage_records(gateway.database_url, "id = ?", (request_id,))
        assert record["status"] == "engine_error" and record["completion_tokens"] > 0


def test_no_auth_is_refused_off_loopback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--no-auth", "--host", "0.0.0.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--no-auth is only allowed on a loopback address" in result.stderr


@pytest.mark.slow
def test_oversized_bodies_are_413(dead_upstream_gateway: GatewayProcess) -> None:
    gateway = dead_upstream_gateway
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    huge = {**BODY, "messages": [{"role": "user", "content": "x" * (21 * 1024 * 1024)}]}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=huge, headers=headers, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.slow
def test_oversized_bodies_without_a_length_are_413_too(dead_upstream_gateway: GatewayProcess) -> None:
    """A chunked upload has no Content-Length to check up front: the limit applies as it streams in."""
    gateway = dead_upstream_gateway
    headers = {"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"}

    def body() -> Iterator[bytes]:
        yield b'{"model": "thinkgate-arith", "messages": [{"role": "user", "content": "'
        for _ in range(21):
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    url = f"{gateway.base_url}/v1/chat/completions"
    response = httpx.post(url, content=body(), headers=headers, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
