"""The usage ledger: reserve the worst case before a request, settle the exact cost after.

Every request that reaches metering ends in exactly one `usage_records` row:
    open ──settle──> completed | length | aborted | engine_error
    open ──reconcile (the gateway died)──> interrupted
    (no reservation possible) ──> rejected
The key's `reserved_micros` and `spent_micros` move in the same transaction as the record, so a
budget can never be overrun by concurrent requests, on one gateway or many sharing PostgreSQL.

Each write is one of the operations of `app/metering/ops.py`. On SQLite they go to the batcher
(`app/db/batch.py`), which writes the ops of many requests in one transaction; on PostgreSQL each
runs in a transaction of its own through SQLAlchemy, settlements group-committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import Principal, has_key_row
from app.core.errors import IdempotencyMismatch
from app.db.batch import SqliteWriter
from app.db.ops import GroupCommit, Op, run_one
from app.db.tables import usage_records
from app.metering.ops import CheckpointOp, OpenOp, RecordOp, SettleOp, count_columns, idempotency_in_use
from app.metering.prices import TokenCounts
from app.metering.ratelimit import RateLimiter
from app.metering.reconcile import PriceOf, heartbeat, reconcile

log = logging.getLogger("thinkgate")

# Retries of a refused settlement before it is left to housekeeping: about 3.5 s in all.
SETTLE_RETRY_DELAYS_S = (0.1, 0.4, 1.0, 2.0)


@dataclass(slots=True)
class OpenRequest:
    """A reservation held while a request runs."""

    request_id: str
    key_id: str
    has_key_row: bool
    reserved_micros: int
    started: float
    principal: Principal | None = None
    window: int | None = None  # rate-limit window counted at open, corrected at settle
    rate_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    counts: TokenCounts
    cost_micros: int
    finish_reason: str | None = None
    error: str | None = None
    ttft_ms: float | None = None
    mode: str | None = None  # the mode that answered (None: the one the record was opened in)


class Unsettled(NamedTuple):
    """A settlement the database refused, kept until it can be written."""

    handle: OpenRequest
    outcome: Outcome
    response_json: str | None
    limited: bool  # its rate window is corrected when it lands

    def to_json(self) -> dict[str, Any]:
        handle, outcome = self.handle, self.outcome
        return {
            "handle": {
                "request_id": handle.request_id,
                "key_id": handle.key_id,
                "has_key_row": handle.has_key_row,
                "reserved_micros": handle.reserved_micros,
                "started": handle.started,
            },
            "outcome": {**asdict(outcome), "counts": asdict(outcome.counts)},
            "response_json": self.response_json,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unsettled:
        outcome = dict(data["outcome"])
        counts = TokenCounts(**outcome.pop("counts"))
        return cls(
            OpenRequest(**data["handle"]), Outcome(counts=counts, **outcome), data["response_json"], False
        )

    def settle_op(self) -> SettleOp:
        """The operation that writes this settlement, as of now."""
        handle, outcome, now = self.handle, self.outcome, time.time()
        values = {
            "status": outcome.status,
            "finish_reason": outcome.finish_reason,
            "error": outcome.error,
            "cost_micros": outcome.cost_micros,
            "settled_at": now,
            "ttft_ms": outcome.ttft_ms,
            "duration_ms": (now - handle.started) * 1000,
            "response_json": self.response_json,
            "mode": outcome.mode,
            **count_columns(outcome.counts),
        }
        rate = None
        principal = handle.principal
        if self.limited and principal is not None and principal.tpm is not None:
            used = outcome.counts.prompt + outcome.counts.completion
            if handle.window is not None and used != handle.rate_tokens:
                rate = (principal.key_id, handle.window, handle.rate_tokens, used)
        key_id = handle.key_id if handle.has_key_row else None
        return SettleOp(handle.request_id, key_id, handle.reserved_micros, values, rate)


class Ledger:
    """`writer`: the batched SQLite path for the per-request writes (open, checkpoint, settle, reject);
    without it (PostgreSQL) they go through SQLAlchemy, settlements still group-committed."""

    def __init__(
        self,
        engine: AsyncEngine,
        instance_id: str,
        price_of: PriceOf,
        writer: SqliteWriter | None = None,
        spool: Path | None = None,
    ) -> None:
        self.engine = engine
        self.spool = spool  # where settlements still refused at shutdown wait for the next start
        self.unsettled: list[Unsettled] = []
        self.instance_id = instance_id
        self.price_of = price_of
        self.writer = writer
        self._settlements = GroupCommit(engine, "thinkgate-settle")  # without `writer`
        self._running = 0  # requests opened and not yet settled by this gateway

    async def _write(self, op: Op, *, defer: bool = False) -> Any:
        """`op`'s result, or its refusal raised: batched (`defer`: it may wait for company) or in a
        transaction of its own."""
        if self.writer is not None:
            return await self.writer.submit(op, defer=defer)
        return await run_one(self.engine, op)

    async def open(
        self,
        principal: Principal,
        *,
        request_id: str,
        model: str,
        mode: str,
        mode_source: str,
        effort: str | None,
        reserve_micros: int,
        api: str = "chat",
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        limiter: RateLimiter | None = None,
        rate_tokens: int = 0,
    ) -> OpenRequest:
        """Reserve `reserve_micros` and record the request as open, atomically; 429 when it does not
        fit (and a `rejected` record), 409 when another request with its Idempotency-Key is open.

        With `limiter`, the request is also counted against the key's rate limits in the same
        transaction (one round trip less per request); a rate-limit refusal undoes the reservation.
        """
        now = time.time()
        has_row = has_key_row(principal.key_id)
        record = {
            "id": request_id,
            "key_id": principal.key_id,
            "created_at": now,
            "instance_id": self.instance_id,
            "model": model,
            "api": api,
            "mode": mode,
            "mode_source": mode_source,
            "effort": effort,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
        }
        op = OpenOp(record, reserve_micros, has_row, principal, rate_tokens, limiter is not None)
        window: int | None = await self._write(op)
        self._running += 1
        return OpenRequest(
            request_id, principal.key_id, has_row, reserve_micros, now, principal, window, rate_tokens
        )

    async def replay(
        self, principal: Principal, idempotency_key: str, request_hash: str
    ) -> dict[str, Any] | None:
        """The stored response of a finished request with this key, or None to run it (again).

        The key is bound to the request it came with: another request under the same key is a 409
        `idempotency_key_reused`, whatever the first one's state. A still-running one is a 409
        `idempotency_key_in_use`. A failed one frees the key for this retry; its record stays.
        """
        where = (
            usage_records.c.key_id == principal.key_id,
            usage_records.c.idempotency_key == idempotency_key,
        )
        columns = (usage_records.c.status, usage_records.c.response_json, usage_records.c.request_hash)
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(*columns).where(*where))).first()
            if row is None:
                return None
            if row.request_hash is not None and row.request_hash != request_hash:
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used with a different request; "
                    "use a new key for a new request.",
                    param="Idempotency-Key",
                )
            if row.status == "open":
                raise idempotency_in_use()
            if row.status in ("completed", "length") and row.response_json:
                stored: dict[str, Any] = orjson.loads(row.response_json)
                return stored
            await conn.execute(update(usage_records).where(*where).values(idempotency_key=None))
        return None

    async def reject(
        self,
        principal: Principal,
        *,
        request_id: str,
        model: str,
        mode: str,
        reason: str,
        api: str = "chat",
    ) -> None:
        """Record a request refused before any reservation (limits, permissions)."""
        now = time.time()
        record = {
            "id": request_id,
            "key_id": principal.key_id,
            "created_at": now,
            "settled_at": now,
            "instance_id": self.instance_id,
            "model": model,
            "api": api,
            "mode": mode,
            "mode_source": "-",
            "status": "rejected",
            "error": reason,
            "duration_ms": 0.0,
        }
        await self._write(RecordOp(record))

    async def checkpoint(self, handle: OpenRequest, counts: TokenCounts) -> None:
        """Save progress of a long stream, so a gateway crash bills what was generated until then."""
        await self._write(CheckpointOp(handle.request_id, count_columns(counts)), defer=True)

    async def settle(
        self,
        handle: OpenRequest,
        outcome: Outcome,
        *,
        response_json: str | None = None,
        limiter: RateLimiter | None = None,
    ) -> bool:
        """Close the record and move reserved → spent; False if it was already closed (reconciled).

        The cost is what the engine did, even past the reservation: an overrun is billed, never
        forgiven, and the key's balance may go below zero by it (logged here). A settlement the
        database refuses (disk full, connection lost) is retried a few times at once, then kept and
        retried by housekeeping (`retry_unsettled`) until it lands; the reservation stays held, so
        the key cannot spend the money meanwhile. False while it is pending.
        """
        self._running = max(self._running - 1, 0)
        if outcome.cost_micros > handle.reserved_micros:
            log.warning(
                "request %s cost %d micro-USD, %d more than reserved: billed in full",
                handle.request_id,
                outcome.cost_micros,
                outcome.cost_micros - handle.reserved_micros,
            )
        pending = Unsettled(handle, outcome, response_json, limiter is not None)
        for delay in (*SETTLE_RETRY_DELAYS_S, None):
            try:
                return await self._settle_once(pending)
            except Exception as error:
                if delay is None:
                    log.error("settling %s failed, kept to retry: %s", handle.request_id, error)
                    self.unsettled.append(pending)
                    return False
                log.warning("settling %s failed (%s); retrying in %g s", handle.request_id, error, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _settle_once(self, pending: Unsettled) -> bool:
        closed: bool
        if self.writer is not None:
            closed = await self.writer.submit(pending.settle_op(), defer=self._running > 0)
        else:
            closed = await self._settlements.submit(pending.settle_op())
        return closed

    async def retry_unsettled(self) -> int:
        """Try the settlements the database refused again; how many are still pending."""
        pending, self.unsettled = self.unsettled, []
        for index, item in enumerate(pending):
            try:
                await self._settle_once(item)
            except Exception as error:
                log.warning("settling %s still fails: %s", item.handle.request_id, error)
                self.unsettled.extend(pending[index:])
                break
        return len(self.unsettled)

    def spool_unsettled(self) -> None:
        """At shutdown: write the settlements still pending to the spool file, settled at the next
        start (`settle_spooled`) before reconciliation could close them from older counts. If the
        file cannot be written either, each is logged in full, for an operator to bill by hand."""
        if not self.unsettled:
            return
        lines = [orjson.dumps(item.to_json()) for item in self.unsettled]
        try:
            if self.spool is None:
                raise OSError("no spool file configured")
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with self.spool.open("ab") as spool:
                spool.write(b"".join(line + b"\n" for line in lines))
            log.error("%d unsettled request(s) spooled to %s", len(lines), self.spool)
        except OSError as error:
            for line in lines:
                log.error("unsettled request, not spooled (%s): %s", error, line.decode())
        self.unsettled = []

    async def settle_spooled(self) -> int:
        """At start-up: settle what a previous life of a gateway spooled; how many were settled."""
        if self.spool is None or not self.spool.exists():
            return 0
        self.unsettled = [
            Unsettled.from_json(orjson.loads(line)) for line in self.spool.read_bytes().splitlines()
        ]
        total = len(self.unsettled)
        self.spool.unlink()
        left = await self.retry_unsettled()
        return total - left

    async def heartbeat(self) -> None:
        await heartbeat(self.engine, self.instance_id)

    async def reconcile(self, *, stale_after_s: float = 60.0, own: bool = False) -> int:
        """Close open records of dead gateways as `interrupted` (see `app/metering/reconcile.py`)."""
        return await reconcile(
            self.engine, self.instance_id, self.price_of, stale_after_s=stale_after_s, own=own
        )

    async def close(self) -> None:
        if self.unsettled and await self.retry_unsettled():
            self.spool_unsettled()
        if self.writer is not None:
            await self.writer.close()
        await self.engine.dispose()
