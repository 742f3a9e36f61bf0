"""Budgets and rate limits under concurrency, on SQLite and on PostgreSQL, against the real engine.

200 requests, 50 at a time, on a budget that covers only part of them: whatever the interleaving,
the key never spends past its budget, every request leaves exactly one record, the key's `spent`
equals the sum of its records, and nothing stays reserved. On PostgreSQL two gateway processes
share the key, as several instances behind a load balancer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess, expected_cost, query_db, start_gateway

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith:short"
BUDGET_USD = "0.0006"
BUDGET_MICROS = 600


async def fire(urls: list[str], key: str, total: int, concurrency: int) -> list[tuple[int, str, str | None]]:
    """`total` small chat requests, `concurrency` at a time, spread over the gateways; streams and
    plain requests alternate. Returns (status, error code or "", request id) per request."""
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str, str | None]:
        body = {
            "model": MODEL,
            "max_tokens": 4,
            "stream": i % 2 == 1,
            "messages": [{"role": "user", "content": f"What is {i} + {i * 7 % 13}?"}],
        }
        async with limit:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            async with client.stream("POST", url, json=body, headers=headers) as response:
                raw = await response.aread()
        if response.status_code != 200:
            return response.status_code, httpx.Response(400, content=raw).json()["error"]["code"], None
        text = raw.decode()
        assert "data: [DONE]" in text if body["stream"] else '"chat.completion"' in text
        return 200, "", response.headers["x-request-id"]

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        return await asyncio.gather(*(one(client, i) for i in range(total)))


def check_ledger(database_url: str, key_id: str, results: list[tuple[int, str, str | None]]) -> None:
    key = query_db(database_url, "SELECT * FROM api_keys WHERE id = :k", k=key_id)[0]
    records = query_db(database_url, "SELECT * FROM usage_records WHERE key_id = :k", k=key_id)
    statuses = Counter(status for status, _, _ in results)
    codes = Counter(code for _, code, _ in results)
    assert set(statuses) == {200, 429}, statuses
    assert codes["insufficient_quota"] == statuses[429]  # refused for budget, nothing else
    assert statuses[200] >= 10, "the budget should have covered some requests"
    # One record per request, whatever became of it.
    assert len(records) == len(results)
    by_status = Counter(r["status"] for r in records)
    assert by_status["rejected"] == statuses[429]
    assert by_status["open"] == 0
    assert {r["id"] for r in records if r["status"] in ("completed", "length")} == {
        rid for _, _, rid in results if rid
    }
    # Money: never past the budget, spent is exactly the sum of the records, nothing left reserved.
    total = sum(r["cost_micros"] for r in records)
    assert key["spent_micros"] == total
    assert total <= BUDGET_MICROS
    assert key["reserved_micros"] == 0
    for record in records:
        assert record["cost_micros"] == (expected_cost(record) if record["status"] != "rejected" else 0)
        assert record["cost_micros"] <= record["reserved_micros"] or record["status"] == "rejected"


def run_budget_case(gateways: list[GatewayProcess]) -> None:
    database_url = gateways[0].database_url
    key = gateways[0].create_key("tight", "--budget", BUDGET_USD)
    key_id = query_db(database_url, "SELECT id FROM api_keys WHERE name = 'tight'")[0]["id"]
    results = asyncio.run(fire([g.base_url for g in gateways], key, total=200, concurrency=50))
    check_ledger(database_url, str(key_id), results)
    with httpx.Client(base_url=gateways[-1].base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        balance = client.get("/v1/balance").json()
        usage = client.get("/v1/usage", params={"group_by": "mode"}).json()["data"]
    assert balance["budget_micros"] == BUDGET_MICROS and balance["reserved_micros"] == 0
    assert balance["spent_micros"] == sum(row["cost_micros"] for row in usage)
    assert sum(row["requests"] for row in usage) == 200


@contextlib.contextmanager
def two_gateways(engine: Any, tmp_path: Path, database_url: str) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes sharing one database, as instances behind a load balancer."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                start_gateway(tmp_path / f"gw{i}", upstreams=[engine.url], database_url=database_url)
            )
            for i in range(2)
        ]


def test_budget_holds_under_concurrency_on_sqlite(engine: Any, tmp_path: Path) -> None:
    with start_gateway(tmp_path / "gw", upstreams=[engine.url]) as gateway:
        run_budget_case([gateway])


@pytest.mark.postgres
def test_budget_holds_across_two_gateways_on_postgres(engine: Any, tmp_path: Path, postgres_url: str) -> None:
    with two_gateways(engine, tmp_path, postgres_url) as gateways:
        run_budget_case(gateways)


def wait_for_fresh_minute(margin_s: float = 20.0) -> None:
    """Rate windows are calendar minutes: start a burst early enough in one to finish inside it."""
    into_minute = time.time() % 60
    if into_minute > 60 - margin_s:
        time.sleep(60 - into_minute + 0.5)


@pytest.mark.postgres
def test_rpm_is_shared_by_two_gateways_on_postgres(engine: Any, tmp_path: Path, postgres_url: str) -> None:
    with two_gateways(engine, tmp_path, postgres_url) as gateways:
        key = gateways[0].create_key("five a minute", "--rpm", "5")
        wait_for_fresh_minute()
        results = asyncio.run(fire([g.base_url for g in gateways], key, total=12, concurrency=12))
    codes = Counter((status, code) for status, code, _ in results)
    assert codes == {(200, ""): 5, (429, "rate_limit_exceeded"): 7}
    records = query_db(postgres_url, "SELECT status, error FROM usage_records")
    assert Counter(r["status"] == "rejected" for r in records) == {True: 7, False: 5}
    assert all("rate_limit_exceeded" in r["error"] for r in records if r["status"] == "rejected")


def test_tpm_counts_the_worst_case_then_the_real_use(engine: Any, tmp_path: Path) -> None:
    """A tokens-per-minute limit admits a request by its worst case (prompt bound + max_tokens) and
    afterwards corrects the window to the tokens really used, so a later request fits again."""
    with start_gateway(tmp_path / "gw", upstreams=[engine.url]) as gateway:
        key = gateway.create_key("tpm", "--tpm", "400")
        wait_for_fresh_minute()
        with httpx.Client(
            base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 1 + 1?"}]}
            too_big = c.post("/v1/chat/completions", json={**body, "max_tokens": 500})
            assert too_big.status_code == 429 and too_big.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(too_big.headers["retry-after"]) >= 1
            used = 0
            for _ in range(3):  # each admitted at ~155 worst-case tokens: three would pass 400 uncorrected
                ok = c.post("/v1/chat/completions", json={**body, "max_tokens": 60, "ignore_eos": True})
                assert ok.status_code == 200, ok.text
                used += ok.json()["usage"]["total_tokens"]
            assert used < 400
        window = query_db(gateway.database_url, "SELECT tokens FROM rate_windows")
        assert [row["tokens"] for row in window] == [used]
