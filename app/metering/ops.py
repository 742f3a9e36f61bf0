"""The ledger's operations, each defined once, as SQL that SQLite and PostgreSQL both run.

    OpenOp        reserve the worst case, count the rate limits, insert the `open` record
    RecordOp      insert a finished record (a request refused before any reservation)
    CheckpointOp  save a running request's counts
    SettleOp      close the record; release reserved → spent and correct the rate window, summed
                  per key and per window over the settlements of one transaction
    InterruptOp   close a dead gateway's record as `interrupted` at its checkpointed counts

The ledger submits them to the SQLite batcher (`app/db/batch.py`) or runs them through SQLAlchemy
(`app/db/ops.py`): the same statements on either path. A refused open undoes its own reservation
and rate count and returns the refusal, so the other ops of its transaction go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from app.auth.principal import Principal
from app.core.errors import APIError, IdempotencyConflict, QuotaExceeded
from app.db.ops import Connection, Op
from app.db.tables import TOKEN_COLUMNS, usage_records
from app.metering import ratelimit
from app.metering.prices import TokenCounts, format_usd

_RESERVE = """
UPDATE api_keys SET reserved_micros = reserved_micros + :amount
WHERE id = :key_id
  AND (budget_micros IS NULL OR budget_micros - spent_micros - reserved_micros >= :amount)"""
_UNRESERVE = "UPDATE api_keys SET reserved_micros = reserved_micros - :amount WHERE id = :key_id"
_RELEASE = """
UPDATE api_keys SET reserved_micros = reserved_micros - :reserved, spent_micros = spent_micros + :cost
WHERE id = :key_id"""

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
_INTERRUPT_COLUMNS = ("status", "cost_micros", "settled_at", "error")


def _update_open(columns: tuple[str, ...], if_given: tuple[str, ...] = ()) -> str:
    """Set `columns` of a record that is still open (settlement and reconciliation race for it), and
    `if_given` where the value is not NULL (else the column keeps what the open wrote)."""
    assignments = [f"{column} = :{column}" for column in columns]
    assignments += [f"{column} = COALESCE(:{column}, {column})" for column in if_given]
    return f"UPDATE usage_records SET {', '.join(assignments)} WHERE id = :id AND status = 'open'"


# A settlement may correct the mode: auto mode's escalation opens a record as the router's long-mode
# turn, and a confident short first attempt answers it in short mode (pipeline/escalate.py).
_CLOSE = _update_open(_CLOSE_COLUMNS, if_given=("mode",))
_CHECKPOINT = _update_open(TOKEN_COLUMNS)
_INTERRUPT = _update_open(_INTERRUPT_COLUMNS)

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
# What `Ledger.open` knows about a request; the other columns take the table's defaults. A second
# open with an Idempotency-Key in use inserts nothing (see `OpenOp`).
_OPEN_COLUMNS = (
    "id",
    "key_id",
    "created_at",
    "instance_id",
    "model",
    "api",
    "mode",
    "mode_source",
    "effort",
    "idempotency_key",
    "request_hash",
    "reserved_micros",
)
_INSERT_OPEN = (
    f"INSERT INTO usage_records ({', '.join(_OPEN_COLUMNS)}, status) "
    f"VALUES ({', '.join(':' + c for c in _OPEN_COLUMNS)}, 'open') "
    "ON CONFLICT (key_id, idempotency_key) DO NOTHING"
)

IDEMPOTENCY_IN_USE = "A request with this Idempotency-Key is still running; retry when it has finished."
GATEWAY_STOPPED = "gateway stopped"  # the error of an `interrupted` record


def idempotency_in_use() -> IdempotencyConflict:
    return IdempotencyConflict(IDEMPOTENCY_IN_USE, param="Idempotency-Key")


def count_columns(counts: TokenCounts) -> dict[str, int]:
    return {
        "prompt_tokens": counts.prompt,
        "image_tokens": counts.image,
        "cached_tokens": counts.cached,
        "completion_tokens": counts.completion,
        "reasoning_tokens": counts.reasoning,
        "answer_tokens": counts.answer,
    }


def insert_record(con: Connection, record: dict[str, Any]) -> None:
    """INSERT a usage record; columns not given take the table's defaults (0 counts, NULLs)."""
    row = dict(_RECORD_DEFAULTS)
    row.update((name, value) for name, value in record.items() if value is not None and name in row)
    con.execute(_INSERT_RECORD, row)


def _rejected_for_budget(record: dict[str, Any]) -> dict[str, Any]:
    """The `rejected` record of a request whose reservation did not fit."""
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
class OpenOp(Op):
    """Reserve, count the rate limits and insert the open record (see `Ledger.open`): the rate
    window counted (None if not limited), or the refusal.

    A budget refusal inserts the `rejected` record. A refusal after the reservation (over a rate
    limit, an Idempotency-Key in use) first undoes the reservation and the rate count: the op's
    transaction goes on with the other ops of the batch, and a savepoint per open (two statements
    more, a noticeable share of the ledger's work: docs/performance.md) is not needed."""

    record: dict[str, Any]
    reserve_micros: int
    has_row: bool
    principal: Principal
    rate_tokens: int
    limited: bool  # count against rpm/tpm

    def apply(self, con: Connection) -> int | APIError | None:
        record, now = self.record, self.record["created_at"]
        if self.has_row:
            fits = con.execute(_RESERVE, {"key_id": record["key_id"], "amount": self.reserve_micros})
            if fits.rowcount == 0:
                insert_record(con, _rejected_for_budget(record))
                return QuotaExceeded(
                    f"This request could cost up to ${format_usd(self.reserve_micros)} (prompt plus "
                    "max_completion_tokens), more than the key's remaining budget. Lower "
                    "max_completion_tokens or raise the key's budget."
                )
        window = None
        if self.limited and ratelimit.is_limited(self.principal):
            window, refusal = ratelimit.count(con, self.principal, self.rate_tokens, now)
            if refusal is not None:
                self._undo(con, window)
                return refusal
        if con.execute(_INSERT_OPEN, {**record, "reserved_micros": self.reserve_micros}).rowcount == 0:
            self._undo(con, window)  # another open request of this key has this Idempotency-Key
            return idempotency_in_use()
        return window

    def _undo(self, con: Connection, window: int | None) -> None:
        """Take back the reservation and the rate count: neither reserved nor counted."""
        if self.has_row:
            con.execute(_UNRESERVE, {"key_id": self.record["key_id"], "amount": self.reserve_micros})
        if window is not None:
            ratelimit.uncount(con, self.principal.key_id, window, self.rate_tokens)


@dataclass(slots=True)
class RecordOp(Op):
    """Insert a finished record (a request refused before any reservation)."""

    record: dict[str, Any]

    def apply(self, con: Connection) -> None:
        insert_record(con, self.record)


@dataclass(slots=True)
class CheckpointOp(Op):
    """Save the counts of a running request, so a gateway crash bills what was generated until then."""

    request_id: str
    counts: dict[str, int]

    def apply(self, con: Connection) -> None:
        con.execute(_CHECKPOINT, {**self.counts, "id": self.request_id})


@dataclass(slots=True)
class SettleOp(Op):
    """Close the open record (`values`: the close columns); True if it was still open. Its key's
    release (reserved → spent) and its rate window's correction are written by `after_batch`."""

    order = 0  # before the other ops of a transaction: budget is freed before opens ask for it

    request_id: str
    key_id: str | None  # None: no key row to release (a principal without a stored key)
    reserved_micros: int
    values: dict[str, Any]
    rate: tuple[str, int, int, int] | None  # (key id, window, admitted tokens, used tokens)

    def apply(self, con: Connection) -> bool:
        """False if the record was closed already (e.g. reconciled): nothing to release."""
        return con.execute(_CLOSE, {**self.values, "id": self.request_id}).rowcount > 0

    @classmethod
    def after_batch(cls, con: Connection, done: list[tuple[Self, Any]]) -> None:
        """The releases of the records this transaction closed, summed: one UPDATE per key and one
        per rate window, however many requests of it the transaction settles (a busy key's
        batch settles dozens)."""
        keys: dict[str, list[int]] = {}  # key id → [reserved to release, cost to spend]
        windows: dict[tuple[str, int], int] = {}  # (key id, window) → tokens to take back
        for settled, closed in done:
            if closed is not True:
                continue
            if settled.key_id is not None:
                tally = keys.setdefault(settled.key_id, [0, 0])
                tally[0] += settled.reserved_micros
                tally[1] += settled.values["cost_micros"]
            if settled.rate is not None:
                key_id, window, admitted, used = settled.rate
                windows[key_id, window] = windows.get((key_id, window), 0) + admitted - used
        for key_id, (reserved, cost) in keys.items():
            con.execute(_RELEASE, {"key_id": key_id, "reserved": reserved, "cost": cost})
        for (key_id, window), excess in windows.items():
            if excess:
                ratelimit.correct(con, key_id, window, excess)


@dataclass(slots=True)
class InterruptOp(SettleOp):
    """Close the open record of a dead gateway as `interrupted` (`values`: status, cost, settled_at,
    error), its counts as last checkpointed; released like a settlement."""

    def apply(self, con: Connection) -> bool:
        return con.execute(_INTERRUPT, {**self.values, "id": self.request_id}).rowcount > 0
