"""Database operations written once and run two ways: batched on SQLite, or through SQLAlchemy.

An operation (`Op`) is a few SQL statements with named parameters, in SQL that SQLite and
PostgreSQL both accept, applied through `Connection`: the one method (`execute`) that a `sqlite3`
connection has and that `SqlConnection` gives a SQLAlchemy one. The SQLite batcher
(`app/db/batch.py`) applies ops on its own `sqlite3` connections; `run`, `run_one` and `GroupCommit`
apply the same ops through SQLAlchemy (PostgreSQL, and SQLite where no batcher runs).

An op that refuses (a rate limit, a budget) undoes what it did itself and returns the refusal, an
exception instance: its transaction goes on with the other ops, and whoever submitted the op gets
the refusal raised. An op that raises rolls back its transaction.

In a transaction of several ops, they run by their class's `order` (lowest first, equal orders as
they came); after the ops of one order, each of their classes' `after_batch` sees its ops and their
results, so that a class can sum what its ops would each have written and write it once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, Self

from sqlalchemy import Connection as SyncConnection
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine


class Rows(Protocol):
    """What a statement gives back: a `sqlite3.Cursor` or a SQLAlchemy `CursorResult`."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """Where an op's statements run: a `sqlite3.Connection`, or a `SqlConnection`."""

    def execute(self, sql: str, parameters: Mapping[str, Any], /) -> Rows: ...


class Op:
    """One operation: `apply` runs its statements on `con` and returns its result (or a refusal)."""

    __slots__ = ()
    order: ClassVar[int] = 1  # in a transaction of several ops, lower orders run first

    def apply(self, con: Connection) -> Any:
        raise NotImplementedError

    @classmethod
    def after_batch(cls, con: Connection, done: list[tuple[Self, Any]]) -> None:
        """Once per transaction, after its ops of this order: this class's ops with their results."""


ApplyOne = Callable[[Connection, Op], Any]


def _apply(con: Connection, op: Op) -> Any:
    return op.apply(con)


def apply_ops(con: Connection, ops: Sequence[Op], apply_one: ApplyOne = _apply) -> list[Any]:
    """The ops' results, in their order; `apply_one` applies one op (the batcher's may wrap it)."""
    results: list[Any] = [None] * len(ops)
    for stage in _stages(ops):
        done: dict[type[Op], list[tuple[Any, Any]]] = {}
        for i in stage:
            op = ops[i]
            results[i] = result = apply_one(con, op)
            done.setdefault(type(op), []).append((op, result))
        for kind, applied in done.items():
            kind.after_batch(con, applied)
    return results


def _stages(ops: Sequence[Op]) -> list[Sequence[int]]:
    """The ops' indices by order, lowest first."""
    orders = sorted({op.order for op in ops})
    if len(orders) == 1:
        return [range(len(ops))]
    return [[i for i, op in enumerate(ops) if op.order == order] for order in orders]


def resolve(batch: Sequence[tuple[Op, asyncio.Future[Any]]], results: Sequence[Any]) -> None:
    """Each op's future gets its result, or has it raised if it is an exception (a refusal)."""
    for (_, done), result in zip(batch, results, strict=True):
        if done.done():
            continue
        if isinstance(result, BaseException):
            done.set_exception(result)
        else:
            done.set_result(result)


# -- through SQLAlchemy -------------------------------------------------------------------------

_text: Callable[[str], TextClause] = functools.lru_cache(maxsize=256)(text)  # compiled once each


class SqlConnection:
    """A SQLAlchemy connection as a `Connection`: the same SQL text, bound by name."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SyncConnection) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Mapping[str, Any], /) -> Rows:
        return self._conn.execute(_text(sql), parameters)


def _apply_all(conn: SyncConnection, ops: Sequence[Op]) -> list[Any]:
    return apply_ops(SqlConnection(conn), ops)


async def run(engine: AsyncEngine, ops: Sequence[Op]) -> list[Any]:
    """The ops in one transaction through SQLAlchemy; their results (refusals returned, not raised)."""
    async with engine.begin() as conn:
        return await conn.run_sync(_apply_all, ops)


async def run_one(engine: AsyncEngine, op: Op) -> Any:
    """`op` in a transaction of its own; its result, or its refusal raised."""
    (result,) = await run(engine, [op])
    if isinstance(result, BaseException):
        raise result
    return result


class GroupCommit:
    """Ops through SQLAlchemy that share transactions: whatever is submitted while one is being
    written goes into the next, one commit for them all."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name  # of the writing task
        self._queued: list[tuple[Op, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, op: Op) -> Any:
        """`op`'s result once its transaction has committed, or its refusal or failure raised."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((op, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name=self.name)
        return await asyncio.shield(done)

    async def _write(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                results = await run(self.engine, [op for op, _ in batch])
            except BaseException as error:
                resolve(batch, [error] * len(batch))
                if not isinstance(error, Exception):
                    raise
                continue
            resolve(batch, results)
