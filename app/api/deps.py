"""Request dependencies: the gateway object and the calling principal."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request

from app.auth.principal import ADMIN, ANONYMOUS, Principal
from app.core.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from app.pipeline.gateway import Gateway

log = logging.getLogger("thinkgate")


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI would run a plain `def` dependency in its thread pool, a hop on every request.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def _bearer(request: Request) -> str | None:
    """The API key: `Authorization: Bearer <key>`, or Anthropic's `x-api-key: <key>`."""
    header = request.headers.get("authorization")
    if not header:
        return request.headers.get("x-api-key", "").strip() or None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("The Authorization header must be 'Bearer <API key>'.")
    return token.strip()


async def get_principal(request: Request, gateway: GatewayDep) -> Principal:
    secret = _bearer(request)
    admin_key = gateway.settings.admin_key
    if secret and admin_key and hmac.compare_digest(secret.encode(), admin_key.encode()):
        return ADMIN
    if secret is None:
        if gateway.settings.no_auth:
            return ANONYMOUS
        raise AuthenticationFailed(
            "No API key provided. Send 'Authorization: Bearer <key>' (or 'x-api-key: <key>'); "
            "create one with `thinkgate keys create`."
        )
    principal = await gateway.keys.authenticate(secret)
    if principal is None:
        if gateway.settings.no_auth:
            return ANONYMOUS
        raise AuthenticationFailed("Incorrect or revoked API key.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def is_admin_caller(request: Request, gateway: Gateway) -> bool:
    """Whether the request carries the admin key (or an admin API key); never raises: for routes
    open to anyone that tell the admin more (`/ready`). No header, no database lookup."""
    try:
        secret = _bearer(request)
    except AuthenticationFailed:
        return False
    if secret is None:
        return False
    admin_key = gateway.settings.admin_key
    if admin_key and hmac.compare_digest(secret.encode(), admin_key.encode()):
        return True
    try:
        principal = await gateway.keys.authenticate(secret)
    except Exception:  # the database may be down while a probe asks
        log.warning("admin check failed: the key store did not answer")
        return False
    return principal is not None and principal.is_admin


async def get_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("This route needs the admin key.")
    return principal


AdminPrincipal = Annotated[Principal, Depends(get_admin)]


MAX_IDEMPOTENCY_KEY = 200  # the ledger's column


def idempotency_key_of(request: Request) -> str | None:
    """The request's Idempotency-Key header (every front door takes one), at most 200 characters."""
    key = request.headers.get("idempotency-key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            f"The Idempotency-Key header is longer than {MAX_IDEMPOTENCY_KEY} characters.",
            param="Idempotency-Key",
        )
    return key
