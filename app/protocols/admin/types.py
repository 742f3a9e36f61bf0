"""Wire types of the admin API (`/v1/admin/keys`), and the bounds its fields share with the CLI.

Budgets travel as USD decimals (numbers or strings, at most 6 decimal places) and are converted
exactly to integer micro-USD; answers carry both the USD value and the `*_micros` integer.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from app.auth.keys import KeyLimits
from app.metering.prices import PER, to_usd

MAX_BUDGET_USD = Decimal(1_000_000_000)
MAX_PER_MINUTE = 2**31 - 1  # rpm and tpm are INTEGER columns: 32-bit on PostgreSQL
# No control characters in names and ids: PostgreSQL refuses NUL in text (a 500 otherwise).
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

Budget = Annotated[
    Decimal | None,
    Field(
        ge=0,
        le=MAX_BUDGET_USD,
        decimal_places=6,
        description="USD, at most 6 decimal places; null = no limit",
    ),
]
Modes = Annotated[
    list[Literal["long", "short"]] | None, Field(min_length=1, description="Allowed reasoning modes")
]
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]

# The key store's column of each limit a request may set (or clear with null); the CLI's too.
LIMIT_COLUMNS = {
    "budget": "budget_micros",
    "rpm": "rpm",
    "tpm": "tpm",
    "modes": "allowed_modes",
    "max_effort": "max_effort",
}


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL)
    admin: bool = Field(False, description="The key may use the admin API and read every key's usage")
    budget: Budget = None
    rpm: int | None = Field(None, ge=1, le=MAX_PER_MINUTE, description="Requests per minute")
    tpm: int | None = Field(
        None, ge=1, le=MAX_PER_MINUTE, description="Tokens per minute (prompt + completion)"
    )
    modes: Modes = None
    max_effort: Effort | None = None


class KeyUpdate(BaseModel):
    """Only the fields present change; `null` removes that limit."""

    model_config = ConfigDict(extra="forbid")

    budget: Budget = None
    rpm: int | None = Field(None, ge=1, le=MAX_PER_MINUTE)
    tpm: int | None = Field(None, ge=1, le=MAX_PER_MINUTE)
    modes: Modes = None
    max_effort: Effort | None = None

    def cleared(self) -> tuple[str, ...]:
        """The key store's columns of the limits this update removes (sent as null)."""
        return tuple(LIMIT_COLUMNS[name] for name in self.model_fields_set if getattr(self, name) is None)


def key_limits(values: KeyCreate | KeyUpdate) -> KeyLimits:
    """The limits a create or update request sets, in the key store's terms (budgets in micro-USD)."""
    return KeyLimits(
        budget_micros=None if values.budget is None else int(values.budget * PER),
        rpm=values.rpm,
        tpm=values.tpm,
        allowed_modes=None if values.modes is None else tuple(dict.fromkeys(values.modes)),
        max_effort=values.max_effort,
    )


class KeyPublic(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    prefix: str = Field(description="First characters of the secret, to recognise it")
    created_at: float
    revoked_at: float | None
    admin: bool
    budget: float | None = Field(description="USD; null = no limit")
    spent: float
    reserved: float
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int
    rpm: int | None
    tpm: int | None
    modes: list[str] | None
    max_effort: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any], **extra: Any) -> Self:
        """The key's answer from its key store row (`extra`: the fields a subclass adds)."""
        budget = row["budget_micros"]
        return cls(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            admin=bool(row["is_admin"]),
            budget=None if budget is None else to_usd(budget),
            spent=to_usd(row["spent_micros"]),
            reserved=to_usd(row["reserved_micros"]),
            budget_micros=budget,
            spent_micros=row["spent_micros"],
            reserved_micros=row["reserved_micros"],
            rpm=row["rpm"],
            tpm=row["tpm"],
            modes=row["allowed_modes"].split(",") if row["allowed_modes"] else None,
            max_effort=row["max_effort"],
            **extra,
        )


class KeyCreated(KeyPublic):
    secret: str = Field(description="Shown only in this answer; only its hash is stored")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyPublic]
