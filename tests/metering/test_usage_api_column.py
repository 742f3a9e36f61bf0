"""Every door writes the same usage records into one ledger: the `api` column says which door a
request came through, on open, on a budget refusal and on a refusal before any reservation, on each
ledger path (batched SQLite, SQLAlchemy on SQLite and on PostgreSQL), and usage groups by it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.auth.keys import KeyLimits
from app.core.errors import QuotaExceeded
from app.metering.ledger import Outcome
from app.metering.prices import TokenCounts
from app.metering.queries import UsageFilter, parse_group_by, usage_totals
from tests.metering.test_ledger_batches import Books, new_books
from tests.support import query_db


@pytest.fixture(params=["batched", "sqlalchemy", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def books(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Books]:
    if request.param == "postgresql":
        made, _ = await new_books(tmp_path, "sqlalchemy", request.getfixturevalue("postgres_url"))
    else:
        made, _ = await new_books(tmp_path, request.param)
    yield made
    await made.ledger.close()


async def test_the_api_column_is_written_by_open_and_reject(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=1000))
    ledger = books.ledger

    async def open_(request_id: str, api: str | None, reserve: int = 100) -> object:
        extra = {} if api is None else {"api": api}
        return await ledger.open(
            principal,
            request_id=request_id,
            model="m",
            mode="long",
            mode_source="test",
            effort=None,
            reserve_micros=reserve,
            **extra,
        )

    default, responses = await asyncio.gather(open_("r-chat", None), open_("r-resp", "responses"))
    with pytest.raises(QuotaExceeded):
        await open_("r-poor", "messages", reserve=10_000)  # the budget refusal's rejected record
    await ledger.reject(principal, request_id="r-rej", model="m", mode="-", reason="x", api="messages")
    for handle in (default, responses):
        await ledger.settle(handle, Outcome("completed", TokenCounts(prompt=1, answer=2), 3))  # type: ignore[arg-type]
    rows = query_db(books.url, "SELECT id, api, status FROM usage_records ORDER BY id")
    assert [(r["id"], r["api"], r["status"]) for r in rows] == [
        ("r-chat", "chat", "completed"),
        ("r-poor", "messages", "rejected"),
        ("r-rej", "messages", "rejected"),
        ("r-resp", "responses", "completed"),
    ]
    totals = await usage_totals(ledger.engine, UsageFilter(), parse_group_by("api"))
    assert [(t["api"], t["requests"], t["rejected"]) for t in totals] == [
        ("chat", 1, 0),
        ("messages", 2, 2),
        ("responses", 1, 0),
    ]
