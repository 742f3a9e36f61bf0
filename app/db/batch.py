"""The request hot path on SQLite: every op (`app/db/ops.py`: a key lookup, a ledger open, checkpoint
or settlement) that arrives while a batch is being written goes into the next batch, one transaction
on its own `sqlite3` connection. What the ops are is theirs to know; this module only batches them.

Why not SQLAlchemy here: through aiosqlite every statement is a thread round trip plus SQLAlchemy's
per-statement work on the event loop, which made the ledger a large share of the gateway's cost
(`bench/metering.py`; the figures: docs/performance.md). Here the event loop only queues an op and
awaits one future; the statements run back to back in C, and the commit (WAL, synchronous=NORMAL, no
fsync) is paid once per batch. While the lock is free and the writer thread idle, the batch (every
op queued in one loop turn) is written on the event loop itself, sparing two thread hand-offs per op
(see `SqliteWriter._write_on_loop`); when another connection holds the lock, on the writer thread.

An op that refuses undoes what it did itself and returns the refusal (see `app/db/ops.py`), so the
rest of the batch commits as if the refused op had had its own transaction; no op needs a savepoint.
If one fails unexpectedly, the batch is redone with every op in a savepoint of its own (see
`_transaction`). Ops submitted with `defer` wait up to a millisecond for company (see
`SqliteWriter._schedule`). Everything else (usage reads, key management, reconciliation) stays on
SQLAlchemy; both connections share the database file under SQLite's own locking.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.db.ops import Connection, Op, apply_ops, resolve

BUSY_TIMEOUT_MS = 10_000
DEFER_S = 0.001  # how long a batch of only deferred ops waits for company
MAX_DEFERRED = 64  # ... unless this many are waiting
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteWriter:
    """Ops in batches, one transaction each: on the event loop while the database lock is free, on
    the writer thread when it is not (see the module doc)."""

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
        self._connect = connect or connect_sqlite
        self._con: sqlite3.Connection | None = None  # the writer thread's
        self._loop_con: sqlite3.Connection | None = None  # the event loop's (see `_write_on_loop`)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thinkgate-ledger")
        self._loop_batch: list[tuple[Op, asyncio.Future[Any]]] = []
        self._scheduled: asyncio.Handle | None = None  # the loop batch's write (see `_schedule`)
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []  # for the writer thread
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, op: Op, *, defer: bool = False) -> Any:
        """Queue `op` for the next batch; its result, or its refusal or failure raised. `defer`: the
        op may wait up to `defer_s` for company (see `_schedule`)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        if self.inline and not self._thread_busy():
            self._loop_batch.append((op, done))
            self._schedule(loop, urgent=not defer or len(self._loop_batch) >= MAX_DEFERRED)
        else:
            self._to_thread(op, done)
        # A request cancelled while it waits loses only the answer: the op stays queued and is written
        # (`resolve` skips a cancelled future), so no shield is needed.
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
                resolve(batch, results)
                return
        for op, done in batch:
            self._to_thread(op, done)

    def _loop_connection(self) -> sqlite3.Connection:
        if self._loop_con is None:
            self._loop_con = self._connect(self.path)
            # Never wait for the lock here. SQLite's own WAL checkpoint (every 1,000 pages) stays
            # on: a commit now and then copies the WAL back; without it the WAL grows with every
            # request (a checkpoint on the thread did not keep up: its RESTART raced these writes;
            # the figures: docs/performance.md).
            self._loop_con.execute("PRAGMA busy_timeout=0")
        return self._loop_con

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(self._thread, self._write, [op for op, _ in batch])
            except BaseException as error:  # the whole transaction failed (e.g. database locked)
                resolve(batch, [error] * len(batch))
                if not isinstance(error, Exception):
                    raise
                continue
            resolve(batch, results)

    def _write(self, ops: list[Op]) -> list[Any]:
        """On the writer thread: the batch in one transaction."""
        if self._con is None:
            self._con = self._connect(self.path)
        return _transaction(self._con, ops)

    async def close(self) -> None:
        self._write_on_loop()  # a deferred batch must not wait for a timer that may never fire
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_connections)
        self._thread.shutdown(wait=True)

    def _close_connections(self) -> None:
        for con in (self._con, self._loop_con):
            if con is not None:
                con.close()
        self._con = self._loop_con = None


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
    """The ops by their order (see `app/db/ops.py`; the ledger's settlements first, then their summed
    releases, then the other ops as they came), in one `BEGIN IMMEDIATE … COMMIT`."""
    con.execute("BEGIN IMMEDIATE")
    try:
        results = apply_ops(con, ops, _in_savepoint if careful else _bare)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return results


def _bare(con: Connection, op: Op) -> Any:
    try:
        return op.apply(con)
    except Exception as error:
        raise _Redo from error


def _in_savepoint(con: Connection, op: Op) -> Any:
    con.execute("SAVEPOINT op", {})
    try:
        return op.apply(con)
    except Exception as failed:
        con.execute("ROLLBACK TO op", {})
        return failed
    finally:
        con.execute("RELEASE op", {})


def connect_sqlite(path: str) -> sqlite3.Connection:
    """A connection for the batcher: WAL, synchronous=NORMAL, and transactions begun by the batcher
    itself (`isolation_level=None`)."""
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return con
