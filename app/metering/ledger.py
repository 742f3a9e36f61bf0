"""The usage ledger: reserve the worst case before a request, settle the exact cost after.

Every request that reaches metering ends in exactly one `usage_records` row:
    open ──settle──> completed | length | aborted | engine_error
    open ──reconcile (the gateway died)──> interrupted
    (no reservation possible) ──> rejected
The key's `reserved_micros` and `spent_micros` move in the same transaction as the record, so a
budget can never be overrun by concurrent requests, on one gateway or many sharing PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.keys import Principal
from app.core.errors import IdempotencyConflict, IdempotencyMismatch, QuotaExceeded
from app.db.tables import api_keys, instances, usage_records
from app.metering.prices import TokenCounts, format_usd
from app.metering.ratelimit import RateLimiter
from app.metering.sqlite_writer import (
    CheckpointOp,
    OpenOp,
    RecordOp,
    SettleOp,
    SqliteWriter,
    rejected_for_budget,
)

log = logging.getLogger("thinkgate")


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


class Unsettled(NamedTuple):
    """A settlement the database refused, kept until it can be written."""

    handle: OpenRequest
    outcome: Outcome
    response_json: str | None
    limiter: RateLimiter | None

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
            OpenRequest(**data["handle"]), Outcome(counts=counts, **outcome), data["response_json"], None
        )


# Retries of a refused settlement before it is left to housekeeping: about 3.5 s in all.
SETTLE_RETRY_DELAYS_S = (0.1, 0.4, 1.0, 2.0)


@dataclass(slots=True)
class _Settlement:
    handle: OpenRequest
    outcome: Outcome
    response_json: str | None
    limiter: RateLimiter | None
    at: float
    done: asyncio.Future[bool]


def _has_key_row(principal: Principal) -> bool:
    return principal.key_id.startswith("key_")


PriceOf = Callable[[str, str, TokenCounts], int]  # (model, mode, counts) -> micro-USD


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
        self._settlements: list[_Settlement] = []
        self._settler: asyncio.Task[None] | None = None
        self._running = 0  # requests opened and not yet settled by this gateway

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
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        limiter: RateLimiter | None = None,
        rate_tokens: int = 0,
    ) -> OpenRequest:
        """Reserve `reserve_micros` and record the request as open, atomically; 429 when it does not fit.

        With `limiter`, the request is also counted against the key's rate limits in the same
        transaction (one round trip less per request); a rate-limit refusal undoes the reservation.
        """
        now = time.time()
        has_row = _has_key_row(principal)
        record = {
            "id": request_id,
            "key_id": principal.key_id,
            "created_at": now,
            "instance_id": self.instance_id,
            "model": model,
            "mode": mode,
            "mode_source": mode_source,
            "effort": effort,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash,
        }
        try:
            if self.writer is not None:
                op = OpenOp(record, reserve_micros, has_row, principal, rate_tokens, limiter is not None)
                fits, window = await self.writer.submit(op)
            else:
                fits, window = await self._open(
                    record, reserve_micros, has_row, limiter, principal, rate_tokens
                )
        except IntegrityError:
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is already running; retry when it has finished.",
                param="Idempotency-Key",
            ) from None
        if not fits:
            raise QuotaExceeded(
                f"This request could cost up to ${format_usd(reserve_micros)} (prompt plus "
                "max_completion_tokens), more than the key's remaining budget. Lower "
                "max_completion_tokens or raise the key's budget."
            )
        self._running += 1
        return OpenRequest(
            request_id, principal.key_id, has_row, reserve_micros, now, principal, window, rate_tokens
        )

    async def _open(
        self,
        record: dict[str, Any],
        reserve_micros: int,
        has_row: bool,
        limiter: RateLimiter | None,
        principal: Principal,
        rate_tokens: int,
    ) -> tuple[bool, int | None]:
        """Reserve, count the rate limits and insert the open record in one transaction; False (and a
        rejected record) if the budget cannot cover the reservation."""
        async with self.engine.begin() as conn:
            if has_row:
                fits = await conn.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == record["key_id"],
                        or_(
                            api_keys.c.budget_micros.is_(None),
                            api_keys.c.budget_micros - api_keys.c.spent_micros - api_keys.c.reserved_micros
                            >= reserve_micros,
                        ),
                    )
                    .values(reserved_micros=api_keys.c.reserved_micros + reserve_micros)
                )
                if fits.rowcount == 0:
                    await conn.execute(insert(usage_records).values(**rejected_for_budget(record)))
                    return False, None
            window = None if limiter is None else await limiter.admit(principal, rate_tokens, conn)
            await conn.execute(
                insert(usage_records).values(**record, status="open", reserved_micros=reserve_micros)
            )
        return True, window

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
                raise IdempotencyConflict(
                    "A request with this Idempotency-Key is still running; retry when it has finished.",
                    param="Idempotency-Key",
                )
            if row.status in ("completed", "length") and row.response_json:
                stored: dict[str, Any] = orjson.loads(row.response_json)
                return stored
            await conn.execute(update(usage_records).where(*where).values(idempotency_key=None))
        return None

    async def reject(
        self, principal: Principal, *, request_id: str, model: str, mode: str, reason: str
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
            "mode": mode,
            "mode_source": "-",
            "status": "rejected",
            "error": reason,
            "duration_ms": 0.0,
        }
        if self.writer is not None:
            await self.writer.submit(RecordOp(record))
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(usage_records).values(**record))

    async def checkpoint(self, handle: OpenRequest, counts: TokenCounts) -> None:
        """Save progress of a long stream, so a gateway crash bills what was generated until then."""
        if self.writer is not None:
            await self.writer.submit(CheckpointOp(handle.request_id, _count_columns(counts)), defer=True)
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(usage_records)
                .where(usage_records.c.id == handle.request_id, usage_records.c.status == "open")
                .values(**_count_columns(counts))
            )

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
        pending = Unsettled(handle, outcome, response_json, limiter)
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
        handle, outcome, response_json, limiter = pending
        if self.writer is not None:
            op = _settle_op(handle, outcome, response_json, limiter)
            closed: bool = await self.writer.submit(op, defer=self._running > 0)
            return closed
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._settlements.append(_Settlement(handle, outcome, response_json, limiter, time.time(), done))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._write_settlements(), name="thinkgate-settle")
        return await asyncio.shield(done)

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

    async def _write_settlements(self) -> None:
        while self._settlements:
            batch, self._settlements = self._settlements, []
            try:
                async with self.engine.begin() as conn:
                    closed = [await self._settle_in(conn, item) for item in batch]
            except BaseException as error:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for item, ok in zip(batch, closed, strict=True):
                if not item.done.done():
                    item.done.set_result(ok)

    async def _settle_in(self, conn: AsyncConnection, item: _Settlement) -> bool:
        handle, outcome, now = item.handle, item.outcome, item.at
        response_json, limiter = item.response_json, item.limiter
        closed = await conn.execute(
            update(usage_records)
            .where(usage_records.c.id == handle.request_id, usage_records.c.status == "open")
            .values(**_close_values(handle, outcome, response_json, now))
        )
        if closed.rowcount == 0:
            return False
        if handle.has_key_row:
            await _release(conn, handle.key_id, handle.reserved_micros, outcome.cost_micros)
        if limiter is not None and handle.principal is not None:
            used = outcome.counts.prompt + outcome.counts.completion
            await limiter.correct(handle.principal, handle.window, handle.rate_tokens, used, conn)
        return True

    async def close(self) -> None:
        if self.unsettled and await self.retry_unsettled():
            self.spool_unsettled()
        if self.writer is not None:
            await self.writer.close()
        await self.engine.dispose()

    async def heartbeat(self) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                update(instances).where(instances.c.id == self.instance_id).values(heartbeat_at=now)
            )
            if updated.rowcount == 0:
                await conn.execute(
                    insert(instances).values(id=self.instance_id, started_at=now, heartbeat_at=now)
                )

    async def reconcile(self, *, stale_after_s: float = 60.0, own: bool = False) -> int:
        """Close open records of dead gateways as `interrupted`, billing their checkpointed tokens.

        `own=True` (at start-up) also takes this instance id's records: they belong to a previous
        life of this instance, which cannot still be running.
        """
        cutoff = time.time() - stale_after_s
        async with self.engine.begin() as conn:
            alive = select(instances.c.id).where(instances.c.heartbeat_at >= cutoff)
            if own:
                alive = alive.where(instances.c.id != self.instance_id)
            rows = (
                await conn.execute(
                    select(usage_records).where(
                        usage_records.c.status == "open",
                        and_(usage_records.c.instance_id.not_in(alive)),
                    )
                )
            ).all()
        closed = 0
        for row in rows:
            if await self._interrupt(row):
                closed += 1
        return closed

    async def _interrupt(self, row: Any) -> bool:
        counts = TokenCounts(
            prompt=row.prompt_tokens,
            image=row.image_tokens,
            cached=row.cached_tokens,
            reasoning=row.reasoning_tokens,
            answer=row.answer_tokens,
        )
        cost = self.price_of(row.model, row.mode, counts)  # billed in full, as at settlement
        async with self.engine.begin() as conn:
            closed = await conn.execute(
                update(usage_records)
                .where(usage_records.c.id == row.id, usage_records.c.status == "open")
                .values(
                    status="interrupted", cost_micros=cost, settled_at=time.time(), error="gateway stopped"
                )
            )
            if closed.rowcount == 0:
                return False
            if row.key_id.startswith("key_"):
                await _release(conn, row.key_id, row.reserved_micros, cost)
        return True


def _close_values(
    handle: OpenRequest, outcome: Outcome, response_json: str | None, now: float
) -> dict[str, Any]:
    """The columns that close an open usage record (both ledger paths)."""
    return {
        "status": outcome.status,
        "finish_reason": outcome.finish_reason,
        "error": outcome.error,
        "cost_micros": outcome.cost_micros,
        "settled_at": now,
        "ttft_ms": outcome.ttft_ms,
        "duration_ms": (now - handle.started) * 1000,
        "response_json": response_json,
        **_count_columns(outcome.counts),
    }


def _settle_op(
    handle: OpenRequest, outcome: Outcome, response_json: str | None, limiter: RateLimiter | None
) -> SettleOp:
    values = _close_values(handle, outcome, response_json, time.time())
    rate = None
    principal = handle.principal
    if limiter is not None and principal is not None and principal.tpm is not None:
        used = outcome.counts.prompt + outcome.counts.completion
        if handle.window is not None and used != handle.rate_tokens:
            rate = (principal.key_id, handle.window, handle.rate_tokens, used)
    key_id = handle.key_id if handle.has_key_row else None
    return SettleOp(handle.request_id, key_id, handle.reserved_micros, values, rate)


async def _release(conn: AsyncConnection, key_id: str, reserved: int, cost: int) -> None:
    await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id)
        .values(
            reserved_micros=api_keys.c.reserved_micros - reserved,
            spent_micros=api_keys.c.spent_micros + cost,
        )
    )


def _count_columns(counts: TokenCounts) -> dict[str, int]:
    return {
        "prompt_tokens": counts.prompt,
        "image_tokens": counts.image,
        "cached_tokens": counts.cached,
        "completion_tokens": counts.completion,
        "reasoning_tokens": counts.reasoning,
        "answer_tokens": counts.answer,
    }
