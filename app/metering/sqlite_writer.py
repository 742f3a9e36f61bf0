"""The request hot path on SQLite: every key lookup and every ledger open, checkpoint and settlement
that arrives while a batch is being written goes into the next batch, one transaction on a dedicated
thread with its own connection.

Why not SQLAlchemy here: through aiosqlite every statement is a thread round trip plus SQLAlchemy's
per-statement work on the event loop, which made the ledger cost a fifth of the gateway's throughput
(see `bench/metering.py`). Here the event loop only queues an operation and awaits one future; the
statements run back to back in C on the writer thread, and the commit (WAL, synchronous=NORMAL, no
fsync) is paid once per batch. While the lock is free and the thread idle, the batch (every op
queued in one loop turn) is written on the event loop itself, sparing two thread hand-offs per op:
see `SqliteWriter._write_on_loop`.

An operation that is refused (an open over a rate limit, or with an Idempotency-Key in use) undoes
what it did itself and returns the refusal, so the rest of the batch commits as if the refused op had
had its own transaction; no op needs a savepoint. If one fails unexpectedly, the batch is redone
with every op in a savepoint of its own (see `_transaction`). Checkpoints, and settlements while
other requests run, wait up to a millisecond for company (see `SqliteWriter._schedule`). Everything
else (usage reads, key management, reconciliation) stays on SQLAlchemy; both connections share the
database file under SQLite's own locking.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.errors import APIError, IdempotencyConflict
from app.db.tables import TOKEN_COLUMNS, usage_records
from app.metering.ratelimit import current_window, refusal_for

if TYPE_CHECKING:
    from app.auth.keys import Principal

log = logging.getLogger("thinkgate")

_RESERVE = """
UPDATE api_keys SET reserved_micros = reserved_micros + :amount
WHERE id = :key_id
  AND (budget_micros IS NULL OR budget_micros - spent_micros - reserved_micros >= :amount)"""
_RELEASE = """
UPDATE api_keys SET reserved_micros = reserved_micros - :reserved, spent_micros = spent_micros + :cost
WHERE id = :key_id"""
_COUNT_RATE = """
INSERT INTO rate_windows (key_id, "window", requests, tokens) VALUES (:key_id, :window, 1, :tokens)
ON CONFLICT (key_id, "window") DO UPDATE
SET requests = requests + 1, tokens = tokens + excluded.tokens
RETURNING requests, tokens"""
_UNRESERVE = "UPDATE api_keys SET reserved_micros = reserved_micros - :amount WHERE id = :key_id"
_UNCOUNT_RATE = """
UPDATE rate_windows SET requests = requests - 1, tokens = tokens - :tokens
WHERE key_id = :key_id AND "window" = :window"""
_CORRECT_RATE = """
UPDATE rate_windows SET tokens = tokens - :excess WHERE key_id = :key_id AND "window" = :window"""
_CLOSE_COLUMNS = (
    "status",
    "finish_reason",
    "error",
    "cost_micros",
    "settled_at",
    "ttft_ms",
    "duration_ms",
    "response_json",
    *TOKEN_COLUMNS,
)
_CLOSE = (
    "UPDATE usage_records SET "
    + ", ".join(f"{c} = :{c}" for c in _CLOSE_COLUMNS)
    + " WHERE id = :id AND status = 'open'"
)
_CHECKPOINT = (
    "UPDATE usage_records SET "
    + ", ".join(f"{c} = :{c}" for c in TOKEN_COLUMNS)
    + " WHERE id = :id AND status = 'open'"
)
_LOOKUP_KEY = (
    "SELECT id, name, is_admin, budget_micros, rpm, tpm, allowed_modes, max_effort FROM api_keys "
    "WHERE secret_hash = :secret_hash AND revoked_at IS NULL"
)
_RECORD_COLUMNS = tuple(c.name for c in usage_records.columns)
_INSERT_RECORD = (
    f"INSERT INTO usage_records ({', '.join(_RECORD_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _RECORD_COLUMNS)})"
)
# What a column not given (or given as None) takes: the table's default (0 counts), else NULL.
_RECORD_DEFAULTS: dict[str, Any] = {
    c.name: None if c.default is None else c.default.arg  # type: ignore[attr-defined]
    for c in usage_records.columns
}


# What `Ledger.open` knows about a request; the other columns take the table's defaults.
_OPEN_COLUMNS = (
    "id",
    "key_id",
    "created_at",
    "instance_id",
    "model",
    "mode",
    "mode_source",
    "effort",
    "idempotency_key",
    "request_hash",
    "reserved_micros",
)
_INSERT_OPEN = (
    f"INSERT INTO usage_records ({', '.join(_OPEN_COLUMNS)}, status) "
    f"VALUES ({', '.join(':' + c for c in _OPEN_COLUMNS)}, 'open')"
)


def _insert_record(con: sqlite3.Connection, record: dict[str, Any]) -> None:
    """INSERT a usage record; columns not given take the table's defaults (0 counts, NULLs)."""
    row = dict(_RECORD_DEFAULTS)
    row.update((name, value) for name, value in record.items() if value is not None and name in row)
    con.execute(_INSERT_RECORD, row)


def rejected_for_budget(record: dict[str, Any]) -> dict[str, Any]:
    """The `rejected` record of a request whose reservation did not fit (both ledger paths)."""
    return {
        **record,
        "idempotency_key": None,
        "request_hash": None,
        "status": "rejected",
        "settled_at": record["created_at"],
        "duration_ms": 0.0,
        "error": "insufficient_quota",
    }


@dataclass(slots=True)
class OpenOp:
    """Reserve, count the rate limits and insert the open record (see `Ledger.open`).

    A refusal (over a rate limit, Idempotency-Key in use) is returned, not raised, after the op has
    undone its reservation and its rate count: its transaction goes on with the other ops of the
    batch, and a savepoint per open (two statements, a sixth of the ledger's work) is not needed."""

    record: dict[str, Any]
    reserve_micros: int
    has_row: bool
    principal: Principal
    rate_tokens: int
    limited: bool  # count against rpm/tpm

    def apply(self, con: sqlite3.Connection) -> tuple[bool, int | None] | APIError:
        record, now = self.record, self.record["created_at"]
        if self.has_row:
            fits = con.execute(_RESERVE, {"key_id": record["key_id"], "amount": self.reserve_micros})
            if fits.rowcount == 0:
                _insert_record(con, rejected_for_budget(record))
                return False, None
        window = None
        if self.limited and (self.principal.rpm is not None or self.principal.tpm is not None):
            window = current_window(now)
            requests, used = con.execute(
                _COUNT_RATE,
                {"key_id": self.principal.key_id, "window": window, "tokens": self.rate_tokens},
            ).fetchone()
            refusal = refusal_for(self.principal, self.rate_tokens, requests, used, window, now)
            if refusal is not None:
                self._undo(con, window)
                return refusal
        try:
            con.execute(_INSERT_OPEN, {**record, "reserved_micros": self.reserve_micros})
        except sqlite3.IntegrityError:  # the statement changed nothing; what came before is undone
            self._undo(con, window)
            return IdempotencyConflict(
                "A request with this Idempotency-Key is already running; retry when it has finished.",
                param="Idempotency-Key",
            )
        return True, window

    def _undo(self, con: sqlite3.Connection, window: int | None) -> None:
        """Take back the reservation and the rate count: neither reserved nor counted."""
        if self.has_row:
            con.execute(_UNRESERVE, {"key_id": self.record["key_id"], "amount": self.reserve_micros})
        if window is not None:
            con.execute(
                _UNCOUNT_RATE,
                {"key_id": self.principal.key_id, "window": window, "tokens": self.rate_tokens},
            )


@dataclass(slots=True)
class SettleOp:
    """Close the open record and move reserved → spent (see `Ledger.settle`). The key's release and
    the rate window's correction are summed with the batch's other settlements (see `Releases`)."""

    request_id: str
    key_id: str | None  # None: no key row to release (a principal without a stored key)
    reserved_micros: int
    values: dict[str, Any]  # the _CLOSE_COLUMNS
    rate: tuple[str, int, int, int] | None  # (key id, window, admitted tokens, used tokens)

    def apply(self, con: sqlite3.Connection) -> bool:
        """Close the record; False if it was closed already (e.g. reconciled): nothing to release."""
        return con.execute(_CLOSE, {**self.values, "id": self.request_id}).rowcount > 0


class Releases:
    """The settlements of one batch, summed: one UPDATE per key and one per rate window, however
    many requests of that key the batch settles (a busy key's batch settles dozens)."""

    __slots__ = ("keys", "windows")

    def __init__(self) -> None:
        self.keys: dict[str, list[int]] = {}  # key id → [reserved to release, cost to spend]
        self.windows: dict[tuple[str, int], int] = {}  # (key id, window) → tokens to take back

    def add(self, settled: SettleOp) -> None:
        if settled.key_id is not None:
            tally = self.keys.setdefault(settled.key_id, [0, 0])
            tally[0] += settled.reserved_micros
            tally[1] += settled.values["cost_micros"]
        if settled.rate is not None:
            key_id, window, admitted, used = settled.rate
            self.windows[key_id, window] = self.windows.get((key_id, window), 0) + admitted - used

    def write(self, con: sqlite3.Connection) -> None:
        for key_id, (reserved, cost) in self.keys.items():
            con.execute(_RELEASE, {"key_id": key_id, "reserved": reserved, "cost": cost})
        for (key_id, window), excess in self.windows.items():
            if excess:
                con.execute(_CORRECT_RATE, {"key_id": key_id, "window": window, "excess": excess})


@dataclass(slots=True)
class CheckpointOp:
    request_id: str
    counts: dict[str, int]

    def apply(self, con: sqlite3.Connection) -> None:
        con.execute(_CHECKPOINT, {**self.counts, "id": self.request_id})


@dataclass(slots=True)
class RecordOp:
    """Insert a finished record (a request refused before any reservation)."""

    record: dict[str, Any]

    def apply(self, con: sqlite3.Connection) -> None:
        _insert_record(con, self.record)


@dataclass(slots=True)
class KeyLookupOp:
    """The active key row with this secret hash (authentication on every request), or None."""

    secret_hash: str

    def apply(self, con: sqlite3.Connection) -> dict[str, Any] | None:
        cursor = con.execute(_LOOKUP_KEY, {"secret_hash": self.secret_hash})
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip((c[0] for c in cursor.description), row, strict=True))


Op = OpenOp | SettleOp | CheckpointOp | RecordOp | KeyLookupOp


class SqliteWriter:
    """Hot-path statements in batches, one transaction each: on the event loop while the database
    lock is free, on the writer thread when it is not (see the module doc)."""

    def __init__(
        self,
        path: str,
        connect: Callable[[str], sqlite3.Connection] | None = None,
        *,
        inline: bool = True,
        defer_s: float | None = None,
    ) -> None:
        self.path = path
        self.inline = inline  # False: every batch goes to the writer thread (tests of that path)
        self.defer_s = DEFER_S if defer_s is None else defer_s
        self._connect = connect or _connect
        self._con: sqlite3.Connection | None = None  # the writer thread's
        self._loop_con: sqlite3.Connection | None = None  # the event loop's (see `_write_on_loop`)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkgate-ledger")
        self._loop_batch: list[tuple[Op, asyncio.Future[Any]]] = []
        self._scheduled: asyncio.Handle | None = None  # the loop batch's write (see `_schedule`)
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []  # for the writer thread
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, op: Op, *, defer: bool = False) -> Any:
        """Queue `op` for the next batch; its result, or the error it raised. `defer`: the op may
        wait up to `defer_s` for company (see `_schedule`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        if self.inline and not self._thread_busy():
            self._loop_batch.append((op, done))
            self._schedule(loop, urgent=not defer or len(self._loop_batch) >= MAX_DEFERRED)
        else:
            self._to_thread(op, done)
        # A request cancelled while it waits loses only the answer: the op stays queued and is written
        # (`_resolve` skips a cancelled future), so no shield is needed.
        return await done

    def _schedule(self, loop: asyncio.AbstractEventLoop, urgent: bool) -> None:
        """Write the loop batch at the end of this loop turn (`urgent`), or within `defer_s`.

        The ledger defers checkpoints, and settlements while other requests are running: nothing
        waits on them but the end of their own response, so a batch of only those waits up to
        `defer_s` for company, and usually leaves with the next request's open. Each transaction
        then carries more ops, whose commit and dirtied index pages are shared. A lone request's
        settlement is not deferred: no company is coming, and its client would wait for nothing.
        """
        scheduled = self._scheduled
        if scheduled is not None and (not urgent or not isinstance(scheduled, asyncio.TimerHandle)):
            return  # already due at least as soon as this op needs
        if scheduled is not None:
            scheduled.cancel()
        if urgent:
            self._scheduled = loop.call_soon(self._write_on_loop)
        else:
            self._scheduled = loop.call_later(self.defer_s, self._write_on_loop)

    def _thread_busy(self) -> bool:
        return bool(self._pending) or (self._flusher is not None and not self._flusher.done())

    def _to_thread(self, op: Op, done: asyncio.Future[Any]) -> None:
        self._pending.append((op, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="thinkgate-ledger-flush")

    def _write_on_loop(self) -> None:
        """The ops queued in one loop turn, in one transaction on the event loop: a small WAL commit
        (no fsync) costs less than the two thread hand-offs it saves, which were most of the
        ledger's share of a request's latency. It never waits for the database lock: if another
        connection holds it, or the writer thread is busy, the batch goes to the writer thread."""
        if self._scheduled is not None:
            self._scheduled.cancel()  # when called by `close`
            self._scheduled = None
        batch, self._loop_batch = self._loop_batch, []
        if not batch:
            return
        if not self._thread_busy():
            results: list[Any] | None
            try:
                results = _transaction(self._loop_connection(), [op for op, _ in batch])
            except sqlite3.OperationalError as error:
                results = None if error.sqlite_errorcode in _LOCKED else [error] * len(batch)
            except Exception as error:  # a callback: every waiting request must still get an answer
                results = [error] * len(batch)
            if results is not None:
                _resolve(batch, results)
                return
        for op, done in batch:
            self._to_thread(op, done)

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_con is None:
            self._loop_con = self._connect(self.path)
            # Never wait for the lock here. SQLite's own WAL checkpoint (every 1,000 pages) stays
            # on: a commit now and then copies ~4 MB back (a few ms); without it the WAL grows by
            # ~27 KB a request (a checkpoint on the thread did not keep up: its RESTART raced these
            # writes).
            self._loop_con.execute("PRAGMA busy_timeout=0")
        return self._loop_con

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(self._thread, self._write, [op for op, _ in batch])
            except BaseException as error:  # the whole transaction failed (e.g. database locked)
                _resolve(batch, [error] * len(batch))
                if not isinstance(error, Exception):
                    raise
                continue
            _resolve(batch, results)

    def _write(self, ops: list[Op]) -> list[Any]:
        """On the writer thread: the batch in one transaction."""
        return _transaction(self._thread_connection(), ops)

    def _thread_connection(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = self._connect(self.path)
        return self._con

    async def close(self) -> None:
        self._write_on_loop()  # a deferred batch must not wait for a timer that may never fire
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_connection)
        self._thread.shutdown(wait=True)

    def _close_connection(self) -> None:
        for con in (self._con, self._loop_con):
            if con is not None:
                con.close()
        self._con = self._loop_con = None


def _resolve(batch: list[tuple[Op, asyncio.Future[Any]]], results: list[Any]) -> None:
    for (_, done), result in zip(batch, results, strict=True):
        if done.done():
            continue
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)


BUSY_TIMEOUT_MS = 10_000
DEFER_S = 0.001  # how long a batch of only settlements/checkpoints waits for company
MAX_DEFERRED = 64  # ... unless this many are waiting
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Redo(Exception):
    """An op outside a savepoint failed: the batch is redone with every op in its own."""


def _transaction(con: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """The ops in one transaction, bare. If one fails, the transaction is rolled back and redone with
    every op in a savepoint of its own, so the failure (its exception is its result) stays that op's
    alone. Any other failure rolls back the whole transaction."""
    try:
        return _run(con, ops, careful=False)
    except _Redo:
        return _run(con, ops, careful=True)


def _run(con: sqlite3.Connection, ops: list[Op], *, careful: bool) -> list[Any]:
    """Settlements first, then their summed releases, then the other ops in their order. The ops of
    a batch were all under way at once, so any order is one they could have happened in; this one
    frees budget before the batch's opens ask for it."""
    results: list[Any] = [None] * len(ops)
    releases = Releases()
    settles = [(i, op) for i, op in enumerate(ops) if isinstance(op, SettleOp)]
    con.execute("BEGIN IMMEDIATE")
    try:
        for i, settle in settles:
            results[i] = _apply(con, settle, careful)
            if results[i] is True:
                releases.add(settle)
        releases.write(con)
        for i, op in enumerate(ops):
            if not isinstance(op, SettleOp):
                results[i] = _apply(con, op, careful)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return results


def _apply(con: sqlite3.Connection, op: Op, careful: bool) -> Any:
    if not careful:
        try:
            return op.apply(con)
        except Exception as error:
            raise _Redo from error
    con.execute("SAVEPOINT op")
    try:
        return op.apply(con)
    except Exception as failed:
        con.execute("ROLLBACK TO op")
        return failed
    finally:
        con.execute("RELEASE op")


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: the writer issues BEGIN/SAVEPOINT/COMMIT itself.
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return con
