"""Reading the ledger: usage totals by group, pages of raw records, balances.

The one place that aggregates `usage_records` in SQL, shared by the HTTP API (`app/api/usage.py`)
and the `thinkgate usage` command (`app/metering/report.py`). Money stays integer micro-USD here;
the callers decide how to show it.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import InvalidRequest
from app.db.tables import TOKEN_COLUMNS, api_keys, usage_records

GROUPS = ("day", "model", "api", "mode", "key")
RECORD_FIELDS = (
    "id",
    "key_id",
    "created_at",
    "settled_at",
    "instance_id",
    "model",
    "api",
    "mode",
    "mode_source",
    "effort",
    "status",
    "finish_reason",
    "error",
    *TOKEN_COLUMNS,
    "reserved_micros",
    "cost_micros",
    "ttft_ms",
    "duration_ms",
    "idempotency_key",
)
DAY_S = 86_400
# The times a bound may name, in unix seconds: from 0001-01-01 to the end of 9999-12-31 (what a date
# can be). Past them, or not finite: a 400, not an overflow in date arithmetic or in the database.
MIN_TIME = -62_135_596_800.0
MAX_TIME = 253_402_300_800.0
_RELATIVE = re.compile(r"^(\d{1,12})([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}


class QueryError(InvalidRequest):
    """A filter given by the caller is malformed; `param` names it (a 400 through the API)."""

    code = "invalid_value"

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message, param=param)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which records: one key (None = every key), created in [start, end) (unix seconds)."""

    key_id: str | None = None
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if self.key_id is not None and "\x00" in self.key_id:  # PostgreSQL refuses NUL in text
            raise QueryError("key_id is not a key id", "key_id")
        for param in ("start", "end"):
            _check_time(getattr(self, param), param)

    def clauses(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.key_id is not None:
            where.append(usage_records.c.key_id == self.key_id)
        if self.start is not None:
            where.append(usage_records.c.created_at >= self.start)
        if self.end is not None:
            where.append(usage_records.c.created_at < self.end)
        return where


# -- parsing what people and clients type --------------------------------------------------------


def parse_group_by(text: str, param: str = "group_by") -> tuple[str, ...]:
    """`day,mode` → ("day", "mode"); each group at most once."""
    groups = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [group for group in groups if group not in GROUPS]
    if not groups or unknown:
        raise QueryError(f"{param} is a comma-separated list of {', '.join(GROUPS)}; got {text!r}", param)
    if len(set(groups)) != len(groups):
        raise QueryError(f"{param} names a group twice: {text!r}", param)
    return groups


def _check_time(seconds: float | None, param: str) -> float | None:
    """`seconds`, if it is a time a bound may name (see MIN_TIME); else a QueryError."""
    if seconds is not None and not (math.isfinite(seconds) and MIN_TIME <= seconds <= MAX_TIME):
        raise QueryError(
            f"{param} is out of range: a time from 0001-01-01 to 9999-12-31 "
            f"(unix seconds {MIN_TIME:.0f} to {MAX_TIME:.0f})",
            param,
        )
    return seconds


def parse_bound(text: str, param: str, *, end: bool = False) -> float:
    """A date (`2026-11-29`, UTC; as an end bound it includes that whole day), an ISO 8601 time
    (`2026-11-29T10:00:00Z`, naive = UTC) or unix seconds → unix seconds, from 0001-01-01 to the end
    of 9999-12-31."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
                seconds = start + DAY_S if end else start  # not a datetime: 9999-12-31 has no next day
            else:
                moment = datetime.fromisoformat(text)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                seconds = moment.timestamp()
        except ValueError:
            shown = text if len(text) <= 40 else f"{text[:40]}…"
            raise QueryError(
                f"{param} must be a date (YYYY-MM-DD), an ISO 8601 time or unix seconds; got {shown!r}", param
            ) from None
    _check_time(seconds, param)
    return seconds


def parse_since(text: str, param: str = "since", *, now: float | None = None) -> float:
    """`30m`, `24h`, `7d`, `2w` back from now, or an absolute bound as `parse_bound` reads it."""
    match = _RELATIVE.match(text.strip())
    if match:
        since = (time.time() if now is None else now) - int(match[1]) * _UNIT_S[match[2]]
        if since < MIN_TIME:
            raise QueryError(f"{param} reaches back before 0001-01-01: {text!r}", param)
        return since
    try:
        return parse_bound(text, param)
    except QueryError:
        shown = text if len(text) <= 40 else f"{text[:40]}…"
        raise QueryError(
            f"{param} is a span such as 24h, 7d, 2w, or a date YYYY-MM-DD; got {shown!r}", param
        ) from None


# -- totals -------------------------------------------------------------------------------------


def _day(engine: AsyncEngine) -> ColumnElement[str]:
    """The UTC calendar day of `created_at`, as YYYY-MM-DD, in this database's dialect."""
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", func.to_timestamp(usage_records.c.created_at)), "YYYY-MM-DD")
    return func.date(usage_records.c.created_at, "unixepoch")


async def usage_totals(
    engine: AsyncEngine, where: UsageFilter, group_by: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per group: the group's fields, then requests, rejected, tokens by kind, cost_micros.

    Rows come sorted by the groups in the order given (days oldest first).
    """
    columns: dict[str, ColumnElement[Any]] = {}
    for group in group_by:
        if group == "day":
            columns["day"] = _day(engine)
        elif group == "model":
            columns["model"] = usage_records.c.model
        elif group == "api":
            columns["api"] = usage_records.c.api
        elif group == "mode":
            columns["mode"] = usage_records.c.mode
        elif group == "key":
            columns["key_id"] = usage_records.c.key_id
            columns["key_name"] = func.coalesce(api_keys.c.name, usage_records.c.key_id)
        else:
            raise QueryError(f"unknown group {group!r}", "group_by")
    records = usage_records.c
    totals: dict[str, ColumnElement[Any]] = {
        "requests": func.count(),
        "rejected": func.coalesce(func.sum(_is(records.status, "rejected")), 0),
        "prompt_tokens": func.coalesce(func.sum(records.prompt_tokens), 0),
        "image_tokens": func.coalesce(func.sum(records.image_tokens), 0),
        "cached_tokens": func.coalesce(func.sum(records.cached_tokens), 0),
        "completion_tokens": func.coalesce(func.sum(records.completion_tokens), 0),
        "reasoning_tokens": func.coalesce(func.sum(records.reasoning_tokens), 0),
        "answer_tokens": func.coalesce(func.sum(records.answer_tokens), 0),
        "cost_micros": func.coalesce(func.sum(records.cost_micros), 0),
    }
    source = (
        usage_records.outerjoin(api_keys, api_keys.c.id == records.key_id)
        if "key" in group_by
        else usage_records
    )
    statement = (
        select(*(c.label(n) for n, c in columns.items()), *(c.label(n) for n, c in totals.items()))
        .select_from(source)
        .where(*where.clauses())
        .group_by(*columns.values())
        .order_by(*columns.values())
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(statement)).all()
    return [
        {name: (int(value) if name in totals else value) for name, value in row._mapping.items()}
        for row in rows
    ]


def _is(column: ColumnElement[Any], value: str) -> ColumnElement[int]:
    return case((column == value, 1), else_=0)


# -- raw records --------------------------------------------------------------------------------


def encode_cursor(created_at: float, record_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{record_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, record_id = raw.split("|", 1)
        seconds = float(created)
        if not math.isfinite(seconds) or "\x00" in record_id:  # NUL: PostgreSQL refuses it in text
            raise ValueError(raw)
        return seconds, record_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise QueryError("cursor is not one this API returned (use next_cursor as given)", "cursor") from None


async def usage_records_page(
    engine: AsyncEngine,
    where: UsageFilter,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` records, newest first, after `cursor`; and the cursor of the next page (or None)."""
    records = usage_records.c
    clauses = where.clauses()
    if status is not None:
        clauses.append(records.status == status)
    if cursor is not None:
        created, record_id = decode_cursor(cursor)
        clauses.append(
            or_(records.created_at < created, and_(records.created_at == created, records.id < record_id))
        )
    statement = (
        select(*(records[name] for name in RECORD_FIELDS))
        .where(*clauses)
        .order_by(records.created_at.desc(), records.id.desc())
        .limit(limit + 1)
    )
    async with engine.connect() as conn:
        rows = [dict(row._mapping) for row in (await conn.execute(statement)).all()]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"])


# -- balance ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Balance:
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int

    @property
    def available_micros(self) -> int | None:
        if self.budget_micros is None:
            return None
        return self.budget_micros - self.spent_micros - self.reserved_micros


async def key_balance(engine: AsyncEngine, key_id: str) -> Balance:
    """A key's budget, settled spend and open reservations. Principals without a key row (the
    admin secret, --no-auth) have no budget; their spend is summed from their records."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.budget_micros, api_keys.c.spent_micros, api_keys.c.reserved_micros).where(
                    api_keys.c.id == key_id
                )
            )
        ).first()
        if row is not None:
            return Balance(row.budget_micros, int(row.spent_micros), int(row.reserved_micros))
        records = usage_records.c
        spent, reserved = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(records.cost_micros), literal(0)),
                    func.coalesce(
                        func.sum(_is(records.status, "open") * records.reserved_micros), literal(0)
                    ),
                ).where(records.key_id == key_id)
            )
        ).one()
    return Balance(None, int(spent), int(reserved))
