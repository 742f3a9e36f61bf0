"""The engine's HTTP errors, in our words: one translation for every call to an engine (a chat
stream, a token count). The engine's own words go to the log, not to the client: they may name its
internals (paths, addresses, other requests). The field it names is kept."""

from __future__ import annotations

import contextlib
import logging
import re

import httpx
import orjson

from app.core.errors import APIError, EngineUnavailable, GatewayTimeout, InvalidRequest, UpstreamError

log = logging.getLogger("thinkgate")

# Failures before the engine sent anything: the request may be retried on another replica.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.PoolTimeout)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,100}")


def engine_error(status: int, raw: bytes, request_id: str, what: str = "the request") -> APIError:
    """The error for an engine's HTTP error answer (`raw`: its body)."""
    log.warning(
        "request %s: the engine answered %d: %s", request_id, status, raw[:1000].decode(errors="replace")
    )
    param = None
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        error = orjson.loads(raw).get("error", {})
        named = error.get("param") if isinstance(error, dict) else None
        if isinstance(named, str) and _FIELD_NAME.fullmatch(named):
            param = named
    if 400 <= status < 500:
        return InvalidRequest(
            f"The engine refused {what} (HTTP {status}); its reason is in the gateway's log "
            f"under request id {request_id}.",
            param=param,
            code="engine_rejected",
        )
    return UpstreamError(f"The engine failed (HTTP {status}).")


def unanswered(exc: httpx.HTTPError) -> APIError:
    """The error for a request that got no answer: no connection (503: retry, maybe elsewhere), no
    response head within `upstream_header_timeout_s` (504), or another transport failure (502)."""
    if isinstance(exc, CONNECT_ERRORS):
        return EngineUnavailable(f"The engine could not be reached ({type(exc).__name__}).")
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeout("The engine did not answer in time; retry shortly.")
    return UpstreamError(f"The engine failed ({type(exc).__name__}).")
