"""Wire types of the usage API: `/v1/usage`, `/v1/usage/records`, `/v1/balance` and the token count's
answer, with their CSV form."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.metering.prices import format_usd, to_usd
from app.metering.queries import Balance

RecordStatus = Literal["open", "completed", "length", "aborted", "engine_error", "rejected", "interrupted"]
GROUP_FIELDS = ("day", "model", "api", "mode", "key_id", "key_name")


class UsageGroup(BaseModel):
    """Totals of one group; only the fields named in `group_by` are present."""

    day: str | None = Field(None, description="UTC day, YYYY-MM-DD")
    model: str | None = None
    api: str | None = Field(None, description="The door: chat, responses, messages")
    mode: str | None = Field(None, description="long or short ('-' for requests refused before a mode)")
    key_id: str | None = None
    key_name: str | None = None
    requests: int = Field(description="Records, whatever their status (rejected included)")
    rejected: int
    prompt_tokens: int
    image_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    cost: float = Field(description="USD (exactly cost_micros / 1e6)")
    cost_micros: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageGroup:
        return cls(**row, cost=to_usd(row["cost_micros"]))

    @staticmethod
    def csv_columns(groups: Sequence[str]) -> list[str]:
        """The CSV columns of totals grouped by `groups` (a `key` group is the key's id and name)."""
        named = [("key_id", "key_name") if group == "key" else (group,) for group in groups]
        totals = [name for name in UsageGroup.model_fields if name not in GROUP_FIELDS]
        return [*(name for names in named for name in names), *totals]


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageGroup]


class UsageRecord(BaseModel):
    """One request's ledger record."""

    id: str
    key_id: str
    created_at: float = Field(description="unix seconds")
    settled_at: float | None
    instance_id: str
    model: str
    api: str = Field(description="The door: chat, responses, messages")
    mode: str
    mode_source: str
    effort: str | None
    status: str
    finish_reason: str | None
    error: str | None
    prompt_tokens: int
    image_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    reserved_micros: int
    cost: float
    cost_micros: int
    ttft_ms: float | None
    duration_ms: float | None
    idempotency_key: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageRecord:
        return cls(**row, cost=to_usd(row["cost_micros"]))


class UsageRecordPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page")


class BalanceOut(BaseModel):
    object: Literal["balance"] = "balance"
    budget: float | None = Field(description="USD; null = no limit")
    spent: float
    reserved: float = Field(description="Held by requests still running")
    available: float | None = Field(description="budget - spent - reserved; null = no limit")
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int
    available_micros: int | None

    @classmethod
    def from_balance(cls, found: Balance) -> BalanceOut:
        available = found.available_micros
        return cls(
            budget=None if found.budget_micros is None else to_usd(found.budget_micros),
            spent=to_usd(found.spent_micros),
            reserved=to_usd(found.reserved_micros),
            available=None if available is None else to_usd(available),
            budget_micros=found.budget_micros,
            spent_micros=found.spent_micros,
            reserved_micros=found.reserved_micros,
            available_micros=available,
        )


class TokenCount(BaseModel):
    total_tokens: int


class TokenCountOut(BaseModel):
    data: TokenCount


def to_csv(rows: Sequence[BaseModel], columns: Sequence[str]) -> str:
    """`rows` as CSV with a header line; costs as exact decimals (never 1.9e-05)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = row.model_dump()
        if "cost_micros" in values:
            values["cost"] = format_usd(values["cost_micros"])
        writer.writerow(values)
    return buffer.getvalue()
