"""Nothing lost, nothing invented: clients that leave, and an engine that breaks off, against vLLM.

Between the gateway and the engine sits a recording proxy: it relays every byte and notes, per
request (the gateway's `x-request-id`), each continuous-usage count the engine sent through it,
whether the stream reached `[DONE]`, and whether the gateway hung up first. Each ledger record is
then checked against what the engine itself counted, not against the gateway's own arithmetic.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from tests.support import GatewayProcess, expected_cost, free_port, query_db, read_body, start_gateway

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"


@dataclass
class Seen:
    prompt_tokens: int = 0
    completions: list[int] = field(default_factory=list)  # completion_tokens of each usage relayed
    per_choice: dict[int, int] = field(default_factory=dict)  # the latest count relayed of each choice
    done: bool = False  # the engine's [DONE] was relayed
    gateway_left: bool = False  # the gateway closed the connection before the end


PACE_S = 0.003


class RecordingProxy:
    """ASGI relay to the engine. A chat body with `"user": "cut-after-N"` is broken off after N
    chunks without `[DONE]`, as an engine that crashes mid-stream would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: dict[str, Seen] = {}
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (event := (await receive())["type"]) != "lifespan.shutdown":
                await send({"type": event + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5))
        body = await read_body(receive)
        url = (
            self.upstream
            + scope["path"]
            + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        )
        request = self.client.build_request(
            scope["method"], url, content=body, headers={"content-type": "application/json"}
        )
        response = await self.client.send(request, stream=True)
        headers = [(b"content-type", response.headers.get("content-type", "application/json").encode())]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode()
        if not request_id or response.status_code != 200:
            await send({"type": "http.response.body", "body": await response.aread()})
            await response.aclose()
            return
        user = str(orjson.loads(body).get("user") or "")
        cut = int(user.removeprefix("cut-after-")) if user.startswith("cut-after-") else None
        await self._relay(response, self.seen.setdefault(request_id, Seen()), cut, receive, send)

    async def _relay(
        self, response: httpx.Response, seen: Seen, cut: int | None, receive: Any, send: Any
    ) -> None:
        async def gateway_leaves() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(gateway_leaves())
        chunks = 0
        try:
            async for line in response.aiter_lines():
                if watcher.done():
                    seen.gateway_left = True
                    return
                if cut is not None and chunks >= cut:
                    break
                # Noted before it is passed on: the gateway may settle (and the test look) as soon
                # as it has read this line.
                if line.startswith("data: [DONE]"):
                    seen.done = True
                elif line.startswith("data: "):
                    chunks += 1
                    chunk = orjson.loads(line[6:])
                    usage = chunk.get("usage")
                    if usage:
                        seen.prompt_tokens = usage["prompt_tokens"]
                        seen.completions.append(usage["completion_tokens"])
                        if len(chunk.get("choices") or ()) == 1:
                            seen.per_choice[chunk["choices"][0]["index"]] = usage["completion_tokens"]
                await send({"type": "http.response.body", "body": (line + "\n").encode(), "more_body": True})
                if line.startswith("data: ") and not seen.done:
                    # Pace the relay like a real engine (a few ms a token): on a loaded 2-core
                    # machine the tiny model can otherwise write 900 tokens before anyone hangs up.
                    await asyncio.sleep(PACE_S)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await response.aclose()


@dataclass
class Setup:
    proxy: RecordingProxy
    gateway: GatewayProcess
    key: str
    key_id: str


@pytest.fixture(scope="module")
def setup(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    proxy = RecordingProxy(engine.url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(proxy, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    workdir: Path = tmp_path_factory.mktemp("disconnect")
    try:
        with start_gateway(workdir, upstreams=[f"http://127.0.0.1:{port}"]) as gw:
            key = gw.create_key("leaver", "--budget", "5")
            key_id = query_db(gw.database_url, "SELECT id FROM api_keys WHERE name = 'leaver'")[0]["id"]
            yield Setup(proxy, gw, key, str(key_id))
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def settled(database_url: str, request_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The request's record once it is no longer open (settling runs just after the response)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = query_db(database_url, "SELECT * FROM usage_records WHERE id = :id", id=request_id)
        assert len(rows) <= 1
        if rows and rows[0]["status"] != "open":
            return rows[0]
        assert time.monotonic() < deadline, f"{request_id} still open: {rows}"
        time.sleep(0.1)


def stream_until(setup: Setup, body: dict[str, Any], chunks: int) -> tuple[str, int]:
    """Stream a request and hang up after `chunks` chunks; (request id, completion tokens seen)."""
    seen_completion = 0
    headers = {"Authorization": f"Bearer {setup.key}"}
    with (
        httpx.Client(base_url=setup.gateway.base_url, headers=headers, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-request-id"]
        received = 0
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            usage = orjson.loads(line[6:]).get("usage")
            if usage:
                seen_completion = usage["completion_tokens"]
            received += 1
            if received >= chunks:
                break
    return request_id, seen_completion


def test_random_disconnects_bill_exactly_what_the_engine_generated(setup: Setup) -> None:
    rng = random.Random(4)
    before = query_db(setup.gateway.database_url, "SELECT COUNT(*) AS n FROM usage_records")[0]["n"]
    cases = []
    for i in range(6):
        body = {
            "model": MODEL,
            "stream": True,
            "max_tokens": 900,
            "ignore_eos": True,
            "reasoning_mode": rng.choice(["long", "short"]),
            "messages": [
                {
                    "role": "user",
                    "content": f"What is {rng.randint(100, 999)} + {rng.randint(100, 999)}? #{i}",
                }
            ],
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        cases.append(stream_until(setup, body, chunks=rng.randint(1, 12)))
    for request_id, client_saw in cases:
        record = settled(setup.gateway.database_url, request_id)
        engine = setup.proxy.seen[request_id]
        assert record["status"] == "aborted" and record["error"] == "client disconnected"
        assert record["prompt_tokens"] == engine.prompt_tokens
        # Billed exactly one of the engine's own running counts, at least what the client received.
        assert record["completion_tokens"] in engine.completions
        assert client_saw <= record["completion_tokens"] < 900
        assert record["reasoning_tokens"] + record["answer_tokens"] == record["completion_tokens"]
        assert record["cost_micros"] == expected_cost(record)
    after = query_db(setup.gateway.database_url, "SELECT COUNT(*) AS n FROM usage_records")[0]["n"]
    assert after - before == len(cases)  # one record per request, no more
    # The engine is told to stop: the gateway hangs up on it while it still generates. On a starved
    # machine the engine may finish all its tokens before the gateway has read them, so not every
    # case can show it; the billing checks above hold either way.
    stopped = [setup.proxy.seen[request_id].gateway_left for request_id, _ in cases]
    assert sum(stopped) >= len(cases) / 2, stopped


def test_non_streaming_client_that_gives_up_is_billed_for_what_ran(setup: Setup) -> None:
    body = orjson.dumps(
        {
            "model": MODEL,
            "max_tokens": 900,
            "reasoning_mode": "long",
            "ignore_eos": True,
            "messages": [{"role": "user", "content": "What is 98765 + 12345? Think it through."}],
        }
    )
    known = set(setup.proxy.seen)
    url = httpx.URL(setup.gateway.base_url)
    with socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {setup.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 60
        while True:  # hang up once the engine is visibly generating for this request
            new = [rid for rid, seen in list(setup.proxy.seen.items()) if rid not in known]
            if new and len(setup.proxy.seen[new[0]].completions) >= 3:
                break
            assert time.monotonic() < deadline, "the request never reached the engine"
            time.sleep(0.02)
    record = settled(setup.gateway.database_url, new[0])
    engine = setup.proxy.seen[record["id"]]
    assert record["status"] == "aborted" and record["key_id"] == setup.key_id
    # The proxy notices the hang-up at its next engine line, which may come after the settlement.
    deadline = time.monotonic() + 10
    while not (engine.gateway_left or engine.done) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.gateway_left and not engine.done
    assert record["completion_tokens"] in engine.completions
    assert record["cost_micros"] == expected_cost(record)


def test_engine_breaking_off_is_an_engine_error_billed_to_the_last_count(setup: Setup) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 100,
        "user": "cut-after-5",
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "What is 31 + 11?"}],
    }
    headers = {"Authorization": f"Bearer {setup.key}"}
    with httpx.Client(base_url=setup.gateway.base_url, headers=headers, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            events = [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        assert events[-1]["error"]["code"] == "engine_error"
        plain = client.post("/v1/chat/completions", json={**body, "stream": False})
        assert plain.status_code == 502 and plain.json()["error"]["type"] == "upstream_error"
        plain_id = plain.headers.get("x-request-id")
    for rid in filter(None, [request_id, plain_id]):
        record = settled(setup.gateway.database_url, rid)
        engine = setup.proxy.seen[rid]
        assert record["status"] == "engine_error"
        assert not engine.done and len(engine.completions) == 5
        # Everything the engine sent reached the gateway, so the count is exactly the engine's last one.
        assert record["completion_tokens"] == engine.completions[-1]
        assert record["cost_micros"] == expected_cost(record)


def test_finished_stream_counts_equal_the_engines_final_usage(setup: Setup) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 12,
        "reasoning_mode": "short",
        "messages": [{"role": "user", "content": "What is 5 + 6?"}],
    }
    request_id, _ = stream_until(setup, body, chunks=10_000)
    record = settled(setup.gateway.database_url, request_id)
    engine = setup.proxy.seen[request_id]
    assert engine.done and not engine.gateway_left
    assert record["status"] in ("completed", "length")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        engine.prompt_tokens,
        engine.completions[-1],
    )
    key = query_db(setup.gateway.database_url, "SELECT * FROM api_keys WHERE id = :k", k=setup.key_id)[0]
    spent = query_db(
        setup.gateway.database_url,
        "SELECT SUM(cost_micros) AS s FROM usage_records WHERE key_id = :k",
        k=setup.key_id,
    )[0]["s"]
    assert key["reserved_micros"] == 0 and key["spent_micros"] == spent


def test_n_choices_are_billed_for_every_choice_when_the_client_leaves(setup: Setup) -> None:
    """vLLM's continuous usage counts each chunk's own choice (only the final chunk, never sent to a
    client that left, sums them): a client that hangs up on 8 choices pays for all 8."""
    body = {
        "model": MODEL, "n": 8, "max_tokens": 40, "ignore_eos": True, "temperature": 1.0, "seed": 7,
        "stream": True, "reasoning_mode": "long",
        "messages": [{"role": "user", "content": "What is 4821 + 3377?"}],
    }  # fmt: skip
    deltas = 0
    headers = {"Authorization": f"Bearer {setup.key}"}
    with (
        httpx.Client(base_url=setup.gateway.base_url, headers=headers, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = (orjson.loads(line[6:]).get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                deltas += bool(delta.get("content") or delta.get("reasoning_content"))
            if deltas >= 160:
                break
    record = settled(setup.gateway.database_url, request_id)
    engine = setup.proxy.seen[request_id]
    assert record["status"] == "aborted" and len(engine.per_choice) == 8
    # Every text delta the client got is at least one token; the engine counted no more than this.
    assert 160 <= record["completion_tokens"] <= sum(engine.per_choice.values())
    assert record["cost_micros"] == expected_cost(record)
