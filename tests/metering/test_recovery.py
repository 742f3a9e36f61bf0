"""A gateway killed mid-stream, and clients that retry: nothing lost, nothing counted twice.

Against the real engine: SIGKILL leaves reservations open; the restarted instance (same instance
id) closes them as `interrupted`, billing the tokens checkpointed while they ran and releasing the
rest. A retried request with the same Idempotency-Key gets the stored answer and is not billed again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import GatewayProcess, expected_cost, free_port, query_db, start_gateway

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"
LONG_STREAM = {
    "model": MODEL,
    "stream": True,
    "max_tokens": 900,
    "ignore_eos": True,
    "reasoning_mode": "long",
    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
}


def read_stream(
    base_url: str, key: str, body: dict[str, Any], stop: threading.Event, seen: list[str]
) -> None:
    """Stream until the gateway dies (or `stop`); the request id goes into `seen`."""
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=base_url, headers=headers, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            seen.append(response.headers["x-request-id"])
            for _ in response.iter_lines():
                if stop.is_set():
                    return
    except httpx.HTTPError:
        return  # the gateway was killed under us


def test_killed_gateway_requests_are_reconciled_on_restart(engine: Any, tmp_path: Path) -> None:
    port = free_port()
    # Frequent checkpoints: on an idle machine the tiny model writes a whole stream in about 2 s.
    args = ("--instance-id", "gateway-under-test", "--checkpoint-interval-s", "0.1")
    workdir = tmp_path / "gw"
    with start_gateway(workdir, upstreams=[engine.url], port=port, args=args) as gateway:
        database = gateway.database_url
        key = gateway.create_key("crash", "--budget", "1")
        key_id = query_db(database, "SELECT id FROM api_keys WHERE name = 'crash'")[0]["id"]
        stop, seen = threading.Event(), []

        def start_round() -> list[threading.Thread]:
            readers = [
                threading.Thread(
                    target=read_stream,
                    args=(
                        gateway.base_url,
                        key,
                        {**LONG_STREAM, "messages": [{"role": "user", "content": f"What is {n} * 12345?"}]},
                        stop,
                        seen,
                    ),
                )
                for n in range(3, 9)
            ]
            for reader in readers:
                reader.start()
            return readers

        # Six streams share the engine, so each runs for a while; kill once one of them is past its
        # first checkpoint, so the ledger holds counts of a running stream. While vLLM on CPU decodes,
        # the machine can stall other processes for a second or more, so a whole round of streams may
        # end unobserved: then another round runs (its finished records must stay untouched too).
        rounds, readers = 1, start_round()
        while True:
            rows = query_db(database, "SELECT * FROM usage_records WHERE key_id = :k", k=key_id)
            if any(r["status"] == "open" and r["completion_tokens"] > 0 for r in rows):
                break
            if not any(reader.is_alive() for reader in readers):
                assert rounds < 5, f"no running stream was ever seen checkpointed: {rows}"
                rounds, readers = rounds + 1, start_round()
            time.sleep(0.02)
        gateway.kill()  # SIGKILL: no chance to settle anything
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
    key_row = query_db(database, "SELECT * FROM api_keys WHERE id = :k", k=key_id)[0]
    at_kill = query_db(database, "SELECT * FROM usage_records WHERE key_id = :k", k=key_id)
    left_open = [r for r in at_kill if r["status"] == "open"]
    finished = [r for r in at_kill if r["status"] != "open"]
    assert left_open and any(r["completion_tokens"] > 0 for r in left_open)
    assert key_row["reserved_micros"] == sum(r["reserved_micros"] for r in left_open)
    assert key_row["spent_micros"] == sum(r["cost_micros"] for r in finished)

    with start_gateway(
        workdir, upstreams=[engine.url], port=port, args=args, database_url=database
    ) as restarted:
        records = query_db(database, "SELECT * FROM usage_records WHERE key_id = :k", k=key_id)
        key_row = query_db(database, "SELECT * FROM api_keys WHERE id = :k", k=key_id)[0]
        assert f"reconciled {len(left_open)} request(s)" in restarted.log()
    before = {r["id"]: r for r in left_open}
    interrupted = {r["id"] for r in records if r["status"] == "interrupted"}
    # Every request a client saw has its record; a request killed before its response headers went
    # out has one too, and it is among the reconciled.
    assert set(seen) <= {r["id"] for r in records}
    assert {r["id"] for r in records} - set(seen) <= interrupted
    # Every request open at the kill is reconciled, and no finished one is touched. (The snapshot
    # can miss the very last commit before SIGKILL: SQLite makes it visible at its next recovery,
    # so the restarted gateway may find one more open record than the snapshot showed.)
    assert set(before) <= interrupted
    assert interrupted.isdisjoint(r["id"] for r in finished)
    for record in (r for r in records if r["id"] in interrupted):
        # Billed exactly the checkpointed tokens, no more, no less; the rest of the hold released.
        if record["id"] in before:
            assert record["completion_tokens"] == before[record["id"]]["completion_tokens"]
        assert record["cost_micros"] == expected_cost(record)
        assert record["settled_at"] is not None
    assert key_row["reserved_micros"] == 0
    assert key_row["spent_micros"] == sum(r["cost_micros"] for r in records)


# -- idempotency ------------------------------------------------------------------------------------


def record_count(gateway: GatewayProcess, key_id: str) -> int:
    rows = query_db(
        gateway.database_url, "SELECT COUNT(*) AS n FROM usage_records WHERE key_id = :k", k=key_id
    )
    return int(rows[0]["n"])


def key_of(gateway: GatewayProcess, name: str) -> tuple[str, str]:
    secret = gateway.create_key(name)
    return secret, str(
        query_db(gateway.database_url, "SELECT id FROM api_keys WHERE name = :n", n=name)[0]["id"]
    )


def spent(gateway: GatewayProcess, key_id: str) -> int:
    return int(
        query_db(gateway.database_url, "SELECT spent_micros FROM api_keys WHERE id = :k", k=key_id)[0][
            "spent_micros"
        ]
    )


def sse_events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_retry_with_the_same_idempotency_key_is_not_billed_twice(
    gateway: GatewayProcess, stream: bool
) -> None:
    secret, key_id = key_of(gateway, f"retrier-{stream}")
    body = (
        {
            "model": MODEL,
            "max_tokens": 24,
            "stream": stream,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is 12 + 30?"}],
        }
        if stream
        else {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": "What is 12 + 30?"}]}
    )
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": f"order-42-{stream}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
        billed = spent(gateway, key_id)
        assert billed > 0
        retries = [client.post("/v1/chat/completions", json=body) for _ in range(2)]
        other_key = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "another"})
    for retry in retries:
        assert retry.status_code == 200 and retry.headers["idempotent-replayed"] == "true"
    if stream:
        original, replayed = sse_events(first.text), sse_events(retries[0].text)
        assert original[-1]["usage"] == replayed[-1]["usage"]
        assert {e["id"] for e in original} == {e["id"] for e in replayed}

        def text(events: list[dict[str, Any]], field: str) -> str:
            return "".join(c["delta"].get(field) or "" for e in events for c in e["choices"])

        assert text(original, "content") == text(replayed, "content")
        assert text(original, "reasoning_content") == text(replayed, "reasoning_content")
    else:
        assert retries[0].json() == first.json()
    # The retries cost nothing and left no record; a different Idempotency-Key is a new request.
    assert other_key.status_code == 200 and "idempotent-replayed" not in other_key.headers
    assert record_count(gateway, key_id) == 2
    usage = sse_events(other_key.text)[-1]["usage"] if stream else other_key.json()["usage"]
    assert spent(gateway, key_id) == billed + round(usage["cost"] * 1e6)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_idempotency_key_still_running_is_409(gateway: GatewayProcess, stream: bool) -> None:
    secret, key_id = key_of(gateway, f"impatient-{stream}")
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": f"slow-{stream}"}
    body = {**LONG_STREAM, "messages": [{"role": "user", "content": "What is 777 * 777?"}]}
    with (
        httpx.Client(base_url=gateway.base_url, headers=headers, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as running,
    ):
        lines = running.iter_lines()  # kept referenced: a collected iterator closes the stream
        next(lines)
        again = client.post("/v1/chat/completions", json={**body, "stream": stream})
    # While vLLM on CPU decodes it can stall this process for a second or more, long enough for the
    # tiny model to finish all 900 tokens: then the retry is the finished original, replayed.
    replayed = again.status_code == 200
    if replayed:
        assert again.headers["idempotent-replayed"] == "true"
    else:
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "idempotency_key_in_use"
        assert again.json()["error"]["param"] == "Idempotency-Key"
    deadline = time.monotonic() + 60
    while True:
        records = query_db(
            gateway.database_url,
            "SELECT status, completion_tokens, idempotency_key FROM usage_records WHERE key_id = :k",
            k=key_id,
        )
        if all(r["status"] != "open" for r in records):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The original and the refused retry: one record each (a replay adds none). The original was
    # either cut off when the client left or, on an idle machine where the tiny model writes 900
    # tokens in under 2 s, had already run to its token limit; either way it holds the key and was
    # billed what it generated.
    assert len(records) == (1 if replayed else 2)
    original = next(r for r in records if r["status"] != "rejected")
    assert [r["status"] for r in records].count("rejected") == (0 if replayed else 1)
    assert original["idempotency_key"] == f"slow-{stream}"
    assert not replayed or original["status"] == "length"
    if original["status"] == "length":
        assert original["completion_tokens"] == LONG_STREAM["max_tokens"]
    else:
        assert original["status"] == "aborted"
        assert original["completion_tokens"] < LONG_STREAM["max_tokens"]
