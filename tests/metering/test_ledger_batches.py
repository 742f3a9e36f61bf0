"""The ledger's batched SQLite path against its SQLAlchemy path, on the same operations.

Many requests opened at the same moment land in one batch (one transaction). Each must still behave
as if it had had a transaction of its own: a refused one (budget, rate limit, a duplicate
Idempotency-Key) leaves nothing reserved or counted behind, and does not undo the others. Every test
runs on each path (batched, written inline on a quiet gateway, SQLAlchemy on SQLite and on
PostgreSQL); all execute the same operations (`app/metering/ops.py`) and must leave the same ledger.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.auth.keys import KeyLimits, KeyStore
from app.auth.principal import Principal
from app.core.errors import IdempotencyConflict, QuotaExceeded, RateLimited
from app.db.batch import SqliteWriter, connect_sqlite
from app.db.engine import create_engine, migrate
from app.metering.ledger import Ledger, OpenRequest, Outcome, Unsettled
from app.metering.ops import RecordOp
from app.metering.prices import TokenCounts
from app.metering.ratelimit import RateLimiter
from tests.support import query_db


class Books:
    def __init__(self, url: str, ledger: Ledger, keys: KeyStore, limiter: RateLimiter) -> None:
        self.url, self.ledger, self.keys, self.limiter = url, ledger, keys, limiter

    async def key(self, limits: KeyLimits) -> Principal:
        _, secret = await self.keys.create("test", limits)
        principal = await self.keys.authenticate(secret)
        assert principal is not None
        return principal

    async def open(self, principal: Principal, i: int, reserve: int, idem: str | None = None) -> OpenRequest:
        return await self.ledger.open(
            principal,
            request_id=f"req-{i}",
            model="m",
            mode="long",
            mode_source="test",
            effort=None,
            reserve_micros=reserve,
            idempotency_key=idem,
            limiter=self.limiter,
            rate_tokens=100,
        )

    def key_row(self, principal: Principal) -> dict[str, object]:
        return query_db(self.url, "SELECT * FROM api_keys WHERE id = :k", k=principal.key_id)[0]

    def statuses(self) -> list[str]:
        return sorted(str(r["status"]) for r in query_db(self.url, "SELECT status FROM usage_records"))


async def new_books(
    tmp_path: Path, writer_kind: str, url: str | None = None, **writer_options: Any
) -> tuple[Books, SqliteWriter | None]:
    """A migrated ledger database (SQLite in `tmp_path`, or `url`); `writer_kind`: sqlalchemy,
    batched or inline (see `books`); `writer_options`: more arguments for the SqliteWriter."""
    url = url or f"sqlite:///{tmp_path / 'ledger.db'}"
    await migrate(url)
    db = create_engine(url)
    path = str(tmp_path / "ledger.db")
    writer = (
        None
        if writer_kind == "sqlalchemy"
        else SqliteWriter(path, inline=writer_kind == "inline", **writer_options)
    )
    ledger = Ledger(db, "instance-1", lambda model, mode, counts: counts.completion, writer)
    return Books(url, ledger, KeyStore(db, writer), RateLimiter(db)), writer


@pytest.fixture(
    params=["batched", "inline", "sqlalchemy", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def books(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Books]:
    """`batched`: every op through a batch on the writer thread (concurrent ones share one);
    `inline`: as the gateway runs, ops written at once on the loop whenever the writer is idle;
    `sqlalchemy`: no batcher, as on PostgreSQL; `postgresql`: the same on a PostgreSQL database."""
    if request.param == "postgresql":
        made, _ = await new_books(tmp_path, "sqlalchemy", request.getfixturevalue("postgres_url"))
    else:
        made, _ = await new_books(tmp_path, request.param)
    yield made
    await made.ledger.close()


async def test_concurrent_reservations_never_pass_the_budget(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=1000))
    results = await asyncio.gather(*(books.open(principal, i, 300) for i in range(6)), return_exceptions=True)
    opened = [r for r in results if isinstance(r, OpenRequest)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert (len(opened), len(refused)) == (3, 3)
    assert books.key_row(principal)["reserved_micros"] == 900
    assert books.statuses() == ["open"] * 3 + ["rejected"] * 3

    for handle in opened:  # settle below the reservation: the rest goes back to the budget
        counts = TokenCounts(prompt=5, reasoning=40, answer=10)
        assert await books.ledger.settle(handle, Outcome("completed", counts, 50), limiter=books.limiter)
    row = books.key_row(principal)
    assert (row["reserved_micros"], row["spent_micros"]) == (0, 150)
    assert books.statuses() == ["completed"] * 3 + ["rejected"] * 3
    # A settled request cannot be settled again (e.g. by a reconciliation racing it).
    assert not await books.ledger.settle(opened[0], Outcome("completed", TokenCounts(), 50))
    assert books.key_row(principal)["spent_micros"] == 150


async def test_rate_limited_requests_in_a_batch_undo_only_themselves(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=10_000, rpm=2))
    results = await asyncio.gather(*(books.open(principal, i, 100) for i in range(5)), return_exceptions=True)
    assert sum(isinstance(r, OpenRequest) for r in results) == 2
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert len(limited) == 3 and all(int(e.headers["Retry-After"]) >= 1 for e in limited)
    assert books.key_row(principal)["reserved_micros"] == 200  # the refused three reserved nothing
    window = query_db(books.url, "SELECT requests, tokens FROM rate_windows")
    assert window == [{"requests": 2, "tokens": 200}]


async def test_a_duplicate_idempotency_key_in_the_same_batch_is_refused_alone(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=10_000, rpm=100))
    first, second, other = await asyncio.gather(
        books.open(principal, 1, 100, idem="same"),
        books.open(principal, 2, 100, idem="same"),
        books.open(principal, 3, 100, idem="different"),
        return_exceptions=True,
    )
    assert isinstance(first, OpenRequest) and isinstance(other, OpenRequest)
    assert isinstance(second, IdempotencyConflict)
    assert books.key_row(principal)["reserved_micros"] == 200  # the refused one reserved nothing
    assert books.statuses() == ["open", "open"]
    window = query_db(books.url, "SELECT requests, tokens FROM rate_windows")
    assert window == [{"requests": 2, "tokens": 200}]  # ... and was not counted


async def test_settlements_of_one_batch_release_their_sum(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=10_000, rpm=100, tpm=100_000))
    opened = await asyncio.gather(*(books.open(principal, i, 300) for i in range(6)))

    # Six settlements at once (one batch): each request used 10 + i tokens and cost 20 + i.
    def outcome(i: int) -> Outcome:
        return Outcome("completed", TokenCounts(prompt=4, answer=6 + i), 20 + i)

    settled = await asyncio.gather(
        *(books.ledger.settle(handle, outcome(i), limiter=books.limiter) for i, handle in enumerate(opened)),
        books.ledger.settle(opened[0], Outcome("completed", TokenCounts(), 999), limiter=books.limiter),
    )
    assert settled.count(True) == 6  # the repeated settlement of the first request changed nothing
    row = books.key_row(principal)
    assert (row["reserved_micros"], row["spent_micros"]) == (0, sum(20 + i for i in range(6)))
    window = query_db(books.url, "SELECT requests, tokens FROM rate_windows")
    assert window == [{"requests": 6, "tokens": sum(10 + i for i in range(6))}]


async def test_a_settlement_books_the_mode_that_answered(books: Books) -> None:
    """Auto mode's escalation opens a record as the router's long turn; a short first attempt that
    answers settles it as short (`Outcome.mode`). Without a mode the record keeps the one it was
    opened in; a refused settlement kept for later (the spool) keeps its mode too."""
    principal = await books.key(KeyLimits(budget_micros=10_000))
    kept_short, escalated, spooled = await asyncio.gather(*(books.open(principal, i, 300) for i in range(3)))
    await books.ledger.settle(
        kept_short, Outcome("completed", TokenCounts(prompt=4, answer=6), 6, mode="short")
    )
    await books.ledger.settle(escalated, Outcome("completed", TokenCounts(prompt=8, answer=9), 9))
    pending = Unsettled(
        spooled, Outcome("completed", TokenCounts(prompt=4, answer=2), 2, mode="short"), None, False
    )
    revived = Unsettled.from_json(json.loads(json.dumps(pending.to_json())))
    assert revived.outcome == pending.outcome
    await books.ledger.settle(revived.handle, revived.outcome)
    modes = {
        r["id"]: (r["mode"], r["cost_micros"]) for r in query_db(books.url, "SELECT * FROM usage_records")
    }
    assert modes == {
        kept_short.request_id: ("short", 6),
        escalated.request_id: ("long", 9),
        spooled.request_id: ("short", 2),
    }
    assert books.key_row(principal)["spent_micros"] == 17


async def test_checkpoints_and_revocation_are_seen_at_once(books: Books) -> None:
    _, secret = await books.keys.create("short-lived", KeyLimits(budget_micros=1000))
    principal = await books.keys.authenticate(secret)
    assert principal is not None and principal.budget_micros == 1000
    handle = await books.open(principal, 1, 500)
    await books.ledger.checkpoint(handle, TokenCounts(prompt=7, reasoning=11, answer=2))
    record = query_db(books.url, "SELECT * FROM usage_records")[0]
    assert (record["prompt_tokens"], record["reasoning_tokens"], record["completion_tokens"]) == (7, 11, 13)

    assert await books.keys.revoke(principal.key_id)
    assert await books.keys.authenticate(secret) is None


async def test_reconciliation_bills_the_checkpoints_of_a_dead_gateway_once(books: Books) -> None:
    principal = await books.key(KeyLimits(budget_micros=10_000, rpm=100, tpm=100_000))
    first, second, settled = await asyncio.gather(*(books.open(principal, i, 300) for i in range(3)))
    await books.ledger.checkpoint(first, TokenCounts(prompt=5, reasoning=30, answer=12))
    await books.ledger.settle(settled, Outcome("completed", TokenCounts(prompt=4, answer=6), 6))
    # A later life of this instance: what it left open is closed at its checkpointed counts, and the
    # price function (here: completion tokens) bills them; the settled record stays as it was.
    assert await books.ledger.reconcile(own=True) == 2
    assert await books.ledger.reconcile(own=True) == 0
    records = {r["id"]: r for r in query_db(books.url, "SELECT * FROM usage_records")}
    assert {rid: (r["status"], r["cost_micros"]) for rid, r in records.items()} == {
        first.request_id: ("interrupted", 42),
        second.request_id: ("interrupted", 0),
        settled.request_id: ("completed", 6),
    }
    assert records[first.request_id]["error"] == "gateway stopped"
    assert records[first.request_id]["settled_at"] is not None
    row = books.key_row(principal)
    assert (row["reserved_micros"], row["spent_micros"]) == (0, 48)
    # A settlement that comes after its record was reconciled changes nothing.
    assert not await books.ledger.settle(first, Outcome("completed", TokenCounts(answer=99), 99))
    assert books.key_row(principal)["spent_micros"] == 48


async def test_a_quiet_gateway_writes_at_once_and_a_held_lock_never_blocks_the_loop(tmp_path: Path) -> None:
    books, writer = await new_books(tmp_path, "inline")
    assert writer is not None
    principal = await books.key(KeyLimits(budget_micros=1000))
    try:
        await books.open(principal, 1, 100)
        assert writer._flusher is None  # written on the loop: no batch, no thread hand-off

        # Another connection (another process, an admin write) holds the write lock for a while:
        # the next op must wait for it on the writer thread, with the event loop free meanwhile.
        other = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        opening = asyncio.create_task(books.open(principal, 2, 100))
        await asyncio.sleep(0.3)
        assert not opening.done() and ticks >= 10  # waiting, and the loop kept running
        other.execute("COMMIT")
        other.close()
        handle = await asyncio.wait_for(opening, 10)
        ticking.cancel()
        assert handle.request_id == "req-2"
        assert books.key_row(principal)["reserved_micros"] == 200
        assert books.statuses() == ["open", "open"]
    finally:
        await books.ledger.close()


async def test_the_wal_stays_small_when_every_write_is_on_the_loop(tmp_path: Path) -> None:
    """Writes on the loop's connection still checkpoint the WAL (SQLite's own, every 1,000 pages):
    without it the WAL grew by ~27 KB a request (40 MB after 1,500)."""
    books, writer = await new_books(tmp_path, "inline")
    assert writer is not None
    principal = await books.key(KeyLimits())
    try:
        for i in range(1500):
            await books.open(principal, i, 1)
        assert writer._flusher is None  # every write was on the loop
        wal = (tmp_path / "ledger.db-wal").stat().st_size
        assert wal < 6_000_000, f"WAL is {wal} bytes after 1,500 writes"
    finally:
        await books.ledger.close()


def _counting_connect(begins: list[str]) -> Callable[[str], sqlite3.Connection]:
    """The writer's connections, recording each transaction they begin."""

    def connect(path: str) -> sqlite3.Connection:
        con = connect_sqlite(path)
        con.set_trace_callback(lambda sql: begins.append(sql) if sql.startswith("BEGIN") else None)
        return con

    return connect


async def _deferring_books(tmp_path: Path, defer_s: float, begins: list[str]) -> Books:
    books, _ = await new_books(tmp_path, "inline", connect=_counting_connect(begins), defer_s=defer_s)
    return books


async def test_a_settlement_waits_for_company_and_leaves_with_the_next_open(tmp_path: Path) -> None:
    begins: list[str] = []
    books = await _deferring_books(tmp_path, 60.0, begins)
    principal = await books.key(KeyLimits(budget_micros=10_000))
    first = await books.open(principal, 1, 100)
    await books.open(principal, 2, 100)  # still running: company will come
    counts = TokenCounts(prompt=5, reasoning=20, answer=5)
    settling = asyncio.create_task(books.ledger.settle(first, Outcome("completed", counts, 25)))
    await asyncio.sleep(0.05)
    assert not settling.done() and books.statuses() == ["open", "open"]  # deferred
    before = len(begins)
    await books.open(principal, 3, 100)  # an open is written at once, with the settlement
    assert await settling
    assert len(begins) == before + 1
    assert books.statuses() == ["completed", "open", "open"]
    assert books.key_row(principal)["reserved_micros"] == 200
    await books.ledger.close()


async def test_a_lone_request_settles_at_once_and_a_deferred_one_when_its_wait_ends(tmp_path: Path) -> None:
    begins: list[str] = []
    books = await _deferring_books(tmp_path, 60.0, begins)
    principal = await books.key(KeyLimits(budget_micros=10_000))
    outcome = Outcome("completed", TokenCounts(prompt=1, answer=1), 1)
    alone = await books.open(principal, 1, 100)
    # No other request is running, so no company is coming: not deferred (else 60 s here).
    assert await asyncio.wait_for(books.ledger.settle(alone, outcome), 5)

    writer = books.ledger.writer
    assert writer is not None
    writer.defer_s = 0.05
    first, _ = await books.open(principal, 2, 100), await books.open(principal, 3, 100)
    assert await asyncio.wait_for(books.ledger.settle(first, outcome), 5)  # after its 50 ms
    assert books.statuses() == ["completed", "completed", "open"]


async def test_close_writes_a_deferred_settlement(tmp_path: Path) -> None:
    begins: list[str] = []
    books = await _deferring_books(tmp_path, 60.0, begins)
    principal = await books.key(KeyLimits(budget_micros=10_000))
    first, _ = await books.open(principal, 1, 100), await books.open(principal, 2, 100)
    outcome = Outcome("completed", TokenCounts(prompt=1, answer=1), 1)
    settling = asyncio.create_task(books.ledger.settle(first, outcome))
    await asyncio.sleep(0.05)
    assert not settling.done()
    await books.ledger.close()  # shutting down writes what was waiting
    assert settling.done() and settling.result() is True
    assert books.statuses() == ["completed", "open"]


async def test_an_op_that_fails_outside_a_savepoint_fails_alone(tmp_path: Path) -> None:
    begins: list[str] = []
    books = await _deferring_books(tmp_path, 0.0, begins)
    principal = await books.key(KeyLimits(budget_micros=10_000))
    await books.open(principal, 1, 100)
    writer = books.ledger.writer
    assert writer is not None
    duplicate = RecordOp({"id": "req-1", "key_id": principal.key_id, "created_at": 0.0,
                          "instance_id": "i", "model": "m", "mode": "long", "mode_source": "t",
                          "status": "rejected"})  # fmt: skip
    before = len(begins)
    results = await asyncio.gather(
        books.open(principal, 2, 100),
        writer.submit(duplicate),  # the same id as an existing record: refused by the database
        books.open(principal, 3, 100),
        return_exceptions=True,
    )
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert all(isinstance(r, OpenRequest) for r in (results[0], results[2]))
    assert books.statuses() == ["open", "open", "open"]
    assert books.key_row(principal)["reserved_micros"] == 300
    assert len(begins) == before + 2  # the batch, rolled back, and its redo with savepoints
    await books.ledger.close()
