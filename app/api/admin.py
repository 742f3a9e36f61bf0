"""The admin API: API keys and their limits, the same operations as `thinkgate keys ...`.

    POST   /v1/admin/keys          create (the secret is returned once)
    GET    /v1/admin/keys          list
    GET    /v1/admin/keys/{id}     one key, with its balance
    PATCH  /v1/admin/keys/{id}     change limits (a field set to null removes that limit)
    DELETE /v1/admin/keys/{id}     revoke

Wire types: app/protocols/admin/types.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from app.api.deps import AdminPrincipal, GatewayDep
from app.api.error_docs import error_responses
from app.core.errors import NotFound
from app.protocols.admin.types import (
    NO_CONTROL,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPublic,
    KeyUpdate,
    key_limits,
)

router = APIRouter(prefix="/v1/admin")

ERRORS = error_responses(
    {
        400: "Invalid body (the field is named in error.param)",
        401: "Missing or wrong API key",
        403: "Not an admin key",
        404: "No such key",
    }
)
KeyId = Annotated[str, Path(max_length=32, pattern=NO_CONTROL, description="Key id (key_...)")]


async def _get(gateway: GatewayDep, key_id: str) -> dict[str, Any]:
    row = await gateway.keys.get(key_id)
    if row is None:
        raise NotFound(f"No API key {key_id!r}", param="key_id", code="key_not_found")
    return row


@router.post(
    "/keys", status_code=201, response_model=KeyCreated, responses=ERRORS, summary="Create an API key"
)
async def create_key(body: KeyCreate, _: AdminPrincipal, gateway: GatewayDep) -> KeyCreated:
    key_id, secret = await gateway.keys.create(body.name, key_limits(body), is_admin=body.admin)
    return KeyCreated.from_row(await _get(gateway, key_id), secret=secret)


@router.get("/keys", response_model=KeyList, responses=ERRORS, summary="List API keys (never their secrets)")
async def list_keys(_: AdminPrincipal, gateway: GatewayDep) -> KeyList:
    return KeyList(data=[KeyPublic.from_row(row) for row in await gateway.keys.list()])


@router.get("/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="One API key")
async def get_key(key_id: KeyId, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    return KeyPublic.from_row(await _get(gateway, key_id))


@router.patch(
    "/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="Change an API key's limits"
)
async def update_key(key_id: KeyId, body: KeyUpdate, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    await _get(gateway, key_id)
    await gateway.keys.update(key_id, key_limits(body), clear=body.cleared())
    return KeyPublic.from_row(await _get(gateway, key_id))


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses=ERRORS, summary="Revoke an API key")
async def revoke_key(key_id: KeyId, _: AdminPrincipal, gateway: GatewayDep) -> KeyPublic:
    await _get(gateway, key_id)
    await gateway.keys.revoke(key_id)  # revoking twice keeps the first revocation time
    return KeyPublic.from_row(await _get(gateway, key_id))
