"""A client that leaves mid-answer: the engine stops promptly and the ledger keeps exact counts."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from tests.support import Engine, GatewayProcess, usage_records

pytestmark = pytest.mark.engine


def engine_counter(engine: Engine, name: str, label: str = "") -> float:
    text = httpx.get(f"{engine.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def record(gateway: GatewayProcess, request_id: str) -> sqlite3.Row:
    rows = usage_records(gateway.database_url, "id = ?", (request_id,))
    assert len(rows) == 1, f"expected exactly one record for {request_id}, found {len(rows)}"
    return rows[0]


def settled(gateway: GatewayProcess, request_id: str) -> sqlite3.Row:
    wait_until(lambda: record(gateway, request_id)["status"] != "open")
    return record(gateway, request_id)


def engine_tokens_per_second(engine: Engine) -> float:
    """The engine's own decoding speed for one stream, measured on the spot."""
    body = {
        "model": "thinkgate-arith", "max_tokens": 300, "ignore_eos": True,
        "messages": [{"role": "user", "content": "What is 1 + 1?"}],
    }  # fmt: skip
    started = time.monotonic()
    response = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=120)
    elapsed = time.monotonic() - started
    return float(response.json()["usage"]["completion_tokens"]) / elapsed


def wait_until(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


MAX_TOKENS = 900


def leave_after(gateway: GatewayProcess, tokens: int) -> tuple[str, int]:
    """Stream a long answer and hang up once `tokens` have been seen; (request id, tokens seen)."""
    body = {
        "model": "thinkgate-arith", "stream": True, "max_tokens": MAX_TOKENS, "reasoning_mode": "long",
        "ignore_eos": True,  # a vLLM extra, passed through: the answer cannot end before we leave
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "messages": [{"role": "user", "content": "What is 123456 + 654321?"}],
    }  # fmt: skip
    seen_tokens = 0
    with httpx.Client(timeout=120) as http, http.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {gateway.api_key}"},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = httpx.Response(200, content=line[6:]).json().get("usage") or {}
                seen_tokens = max(seen_tokens, usage.get("completion_tokens", 0))
            if seen_tokens >= tokens:
                return response.headers["x-request-id"], seen_tokens
    raise AssertionError("the stream ended before the client left")


def test_disconnect_stops_the_engine_and_bills_what_was_generated(
    engine: Engine, gateway: GatewayProcess
) -> None:
    # On two cores vLLM's API process now and then lags its engine core by a second or two (seen
    # without the gateway too), so the engine may have finished the whole answer before the
    # client's hang-up could reach it. Such a round proves
    # nothing about aborting (the answer is simply complete); another round is run.
    for _ in range(12):
        wait_until(lambda: engine_counter(engine, "vllm:num_requests_running") == 0)
        generated_before = engine_counter(engine, "vllm:generation_tokens_total")
        request_id, seen_tokens = leave_after(gateway, 40)
        # The connection is closed here, mid-answer: how far had the engine got at that moment?
        at_close = engine_counter(engine, "vllm:generation_tokens_total") - generated_before
        wait_until(lambda: engine_counter(engine, "vllm:num_requests_running") == 0)
        generated = engine_counter(engine, "vllm:generation_tokens_total") - generated_before
        row = settled(gateway, request_id)
        if at_close < MAX_TOKENS - 100:  # well short of the end (the engine's counters can lag a step)
            break
        assert row["status"] in {"length", "aborted"} and row["completion_tokens"] <= generated
        time.sleep(0.5)  # back-to-back rounds make the lag likelier
    else:
        raise AssertionError("the engine finished every answer before the client could leave")

    # What the engine made after we left is at most about one second of its own generation.
    one_second = engine_tokens_per_second(engine)
    assert generated - at_close <= one_second + 16, (at_close, generated, one_second)
    reached = generated < MAX_TOKENS or at_close + one_second >= MAX_TOKENS
    assert reached, "the disconnect never reached the engine"
    assert row["status"] == "aborted"
    # Billed exactly what the engine produced for it, as the engine counted (continuous usage).
    assert seen_tokens <= row["completion_tokens"] <= generated
    assert row["reasoning_tokens"] + row["answer_tokens"] == row["completion_tokens"]
    assert row["cost_micros"] > 0
