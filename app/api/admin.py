"""The admin API: API keys and their limits, the same operations as `thinkgate keys ...`.

    POST   /v1/admin/keys          create (the secret is returned once)
    GET    /v1/admin/keys          list
    GET    /v1/admin/keys/{id}     one key, with its balance
    PATCH  /v1/admin/keys/{id}     change limits (a field set to null removes that limit)
    DELETE /v1/admin/keys/{id}     revoke

Budgets travel as USD decimals (numbers or strings, at most 6 decimal places) and are converted
exactly to integer micro-USD; answers carry both the USD value and the `*_micros` integer.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AdminPrincipal, GatewayDep
from app.api.error_docs import error_responses
from app.auth.keys import KeyLimits
from app.core.errors import NotFound
from app.metering.prices import PER, to_usd

router = APIRouter(prefix="/v1/admin")

ERRORS = error_responses(
    {
        400: "Invalid body (the field is named in error.param)",
        401: "Missing or wrong API key",
        403: "Not an admin key",
        404: "No such key",
    }
)
MAX_BUDGET_USD = Decimal(1_000_000_000)
MAX_PER_MINUTE = 2**31 - 1  # rpm and tpm are INTEGER columns: 32-bit on PostgreSQL

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
Effort = Literal["none", "minimal", "low", "medium", "high"]
# No control characters in names and ids: PostgreSQL refuses NUL in text (a 500 otherwise).
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
KeyId = Annotated[str, Path(max_length=32, pattern=NO_CONTROL, description="Key id (key_...)")]


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


class KeyCreated(KeyPublic):
    secret: str = Field(description="Shown only in this answer; only its hash is stored")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyPublic]


def _micros(usd: Decimal) -> int:
    return int(usd * PER)


_COLUMNS = {
    "budget": "budget_micros",
    "rpm": "rpm",
    "tpm": "tpm",
    "modes": "allowed_modes",
    "max_effort": "max_effort",
}


def _limits(values: KeyCreate | KeyUpdate) -> KeyLimits:
    return KeyLimits(
        budget_micros=None if values.budget is None else _micros(values.budget),
        rpm=values.rpm,
        tpm=values.tpm,
        allowed_modes=None if values.modes is None else tuple(dict.fromkeys(values.modes)),
        max_effort=values.max_effort,
    )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    budget = row["budget_micros"]
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "admin": bool(row["is_admin"]),
        "budget": None if budget is None else to_usd(budget),
        "spent": to_usd(row["spent_micros"]),
        "reserved": to_usd(row["reserved_micros"]),
        "budget_micros": budget,
        "spent_micros": row["spent_micros"],
        "reserved_micros": row["reserved_micros"],
        "rpm": row["rpm"],
        "tpm": row["tpm"],
        "modes": row["allowed_modes"].split(",") if row["allowed_modes"] else None,
        "max_effort": row["max_effort"],
    }


async def _get(gateway: GatewayDep, key_id: str) -> dict[str, Any]:
    row = await gateway.keys.get(key_id)
    if row is None:
        raise NotFound(f"No API key {key_id!r}", param="key_id", code="key_not_found")
    return row


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=ERRORS, summary="Create an API key"
)
async def create_key(body: KeyCreate, _: AdminPrincipal, gateway: GatewayDep) -> KeyCreated:
    key_id, secret = await gateway.keys.create(body.name, _limits(body), is_admin=body.admin)
    return KeyCreated(**_public(await _get(gateway, key_id)), secret=secret)


@router.get("/keys", response_model=KeyList, responses=ERRORS, summary="List API keys (never their secrets)")
async def list_keys(_: AdminPrincipal, gateway: GatewayDep) -> KeyList:
    return KeyList(data=[KeyPublic(**_public(row)) for row in await gateway.keys.list()])


@router.get("/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="One API key")
async def get_key(key_id: KeyId, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    return KeyPublic(**_public(await _get(gateway, key_id)))


@router.patch(
    "/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="Change an API key's limits"
)
async def update_key(key_id: KeyId, body: KeyUpdate, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    await _get(gateway, key_id)
    clear = tuple(_COLUMNS[name] for name in body.model_fields_set if getattr(body, name) is None)
    await gateway.keys.update(key_id, _limits(body), clear=clear)
    return KeyPublic(**_public(await _get(gateway, key_id)))


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="Revoke an API key")
async def revoke_key(key_id: KeyId, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    await _get(gateway, key_id)
    await gateway.keys.revoke(key_id)  # revoking twice keeps the first revocation time
    return KeyPublic(**_public(await _get(gateway, key_id)))
