"""A busy engine hands the gateway many tokens in one read (the fake engine writes a whole stream at
once). The relay passes them on together; each chunk must still be exactly what it would have been
on its own: order, reasoning split, and the usage of clients that ask for it on every chunk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bench.run import start_fake_engine
from tests.support import GatewayProcess, start_gateway, usage_records

pytestmark = pytest.mark.slow

TOKENS = 40


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("relay-batches")
    fake = start_fake_engine(workdir, TOKENS)
    try:
        with start_gateway(workdir, upstreams=[fake.url]) as gateway:
            gateway.api_key = gateway.create_key("batches")
            yield gateway
    finally:
        fake.process.terminate()
        fake.process.wait(timeout=30)


def stream(gateway: GatewayProcess, stream_options: dict[str, bool]) -> list[dict[str, object]]:
    body = {
        "model": "fake-reasoner", "stream": True,
        "stream_options": stream_options, "messages": [{"role": "user", "content": "Think."}],
    }  # fmt: skip
    events = []
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30,
        headers={"Authorization": f"Bearer {gateway.api_key}"},
    ) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(orjson.loads(line[6:]))
    return events


def _text(delta: dict[str, str]) -> str:
    return (delta.get("reasoning_content") or "") + (delta.get("content") or "")


def test_every_chunk_of_a_batch_carries_its_own_usage(gateway: GatewayProcess) -> None:
    events = stream(gateway, {"include_usage": True, "continuous_usage_stats": True})
    token_chunks = [e for e in events if e["choices"] and _text(e["choices"][0]["delta"])]
    assert len(token_chunks) == TOKENS
    # The fake engine's i-th token chunk reports i completion tokens; a batch normalised before it
    # is sent must not hand every chunk the batch's final count.
    completion = [e["usage"]["completion_tokens"] for e in token_chunks]
    assert completion == list(range(1, TOKENS + 1))
    details = [e["usage"]["completion_tokens_details"] for e in token_chunks]
    half = TOKENS // 2
    assert [d["reasoning_tokens"] for d in details] == [min(i, half) for i in range(1, TOKENS + 1)]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == TOKENS


def test_a_batched_stream_keeps_order_and_the_reasoning_split(gateway: GatewayProcess) -> None:
    events = stream(gateway, {"include_usage": True})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    reasoning = "".join(str(d.get("reasoning_content") or "") for d in deltas)
    content = "".join(str(d.get("content") or "") for d in deltas)
    half = TOKENS // 2
    assert reasoning == "".join(f" r{i}" for i in range(half))
    assert content == "".join(f" a{i}" for i in range(half, TOKENS))
    assert all("usage" not in e for e in events[:-1])  # usage only where it was asked for
    usage = events[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == half
    rows = usage_records(gateway.database_url, "id = ?", (events[-1]["id"],))
    assert len(rows) == 1 and rows[0]["reasoning_tokens"] == half and rows[0]["answer_tokens"] == half
