"""The ledger's housekeeping: gateway heartbeats, and the records that dead gateways left open.

Each gateway heartbeats into `instances`. The open records of a gateway whose heartbeat is stale (or,
at start-up, of this instance id's previous life) are closed as `interrupted`, billed at their last
checkpointed counts, their reservations released (`InterruptOp`). Settlement and reconciliation
both close only a record that is still open, so a record is closed once, never twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import has_key_row
from app.db.ops import run_one
from app.db.tables import instances, usage_records
from app.metering.ops import GATEWAY_STOPPED, InterruptOp
from app.metering.prices import TokenCounts

PriceOf = Callable[[str, str, TokenCounts], int]  # (model, mode, counts) -> micro-USD


async def heartbeat(engine: AsyncEngine, instance_id: str) -> None:
    now = time.time()
    async with engine.begin() as conn:
        updated = await conn.execute(
            update(instances).where(instances.c.id == instance_id).values(heartbeat_at=now)
        )
        if updated.rowcount == 0:
            await conn.execute(insert(instances).values(id=instance_id, started_at=now, heartbeat_at=now))


async def reconcile(
    engine: AsyncEngine, instance_id: str, price_of: PriceOf, *, stale_after_s: float, own: bool
) -> int:
    """Close open records of dead gateways as `interrupted`; how many were closed.

    `own=True` (at start-up) also takes `instance_id`'s records: they belong to a previous life of
    this instance, which cannot still be running.
    """
    cutoff = time.time() - stale_after_s
    async with engine.begin() as conn:
        alive = select(instances.c.id).where(instances.c.heartbeat_at >= cutoff)
        if own:
            alive = alive.where(instances.c.id != instance_id)
        rows = (
            await conn.execute(
                select(usage_records).where(
                    usage_records.c.status == "open", usage_records.c.instance_id.not_in(alive)
                )
            )
        ).all()
    closed = 0
    for row in rows:
        if await run_one(engine, _interrupt(row, price_of)):
            closed += 1
    return closed


def _interrupt(row: Any, price_of: PriceOf) -> InterruptOp:
    counts = TokenCounts(
        prompt=row.prompt_tokens,
        image=row.image_tokens,
        cached=row.cached_tokens,
        reasoning=row.reasoning_tokens,
        answer=row.answer_tokens,
    )
    values = {
        "status": "interrupted",
        "cost_micros": price_of(row.model, row.mode, counts),  # billed in full, as at settlement
        "settled_at": time.time(),
        "error": GATEWAY_STOPPED,
    }
    key_id = row.key_id if has_key_row(row.key_id) else None
    return InterruptOp(row.id, key_id, row.reserved_micros, values, None)
