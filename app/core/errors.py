"""The errors a client can get, in one tree, and their bodies, built in one place.

APIError                         every error the API answers with (message, type, param, code)
├── InvalidRequest      400      a field is wrong (names it in `param`)
│   └── ConflictingFields 400    two explicit choices disagree
├── AuthenticationFailed 401
├── PermissionDenied    403      the key may not use this mode/effort/route
├── NotFound            404      unknown model or route
├── MethodNotAllowed    405      a route asked with a method it does not take (with Allow)
├── IdempotencyConflict 409      the same Idempotency-Key is still running
├── IdempotencyMismatch 409      the same Idempotency-Key with a different request
├── PayloadTooLarge     413
├── UnsupportedMediaType 415     a body not declared JSON (--no-auth)
├── QuotaExceeded       429      budget cannot cover the worst case (insufficient_quota)
├── RateLimited         429      requests/tokens per minute (rate_limit_exceeded)
├── HTTPStatusError     4xx      any other HTTP error of the framework (http_<status>)
├── InternalError       500      a bug, logged; the client learns nothing more
├── UpstreamError       502      the engine answered with something unusable
├── EngineUnavailable   503      no healthy engine (with Retry-After)
└── GatewayTimeout      504      the engine did not answer in time (with Retry-After)

One body builder per wire format turns an error into what that API's clients expect: `openai_body`
({"error": {"message", "type", "param", "code"}}, the OpenAI APIs), `anthropic_body` ({"type": "error",
"error": {"type", "message"}}, the Messages API). `error_response` is the
one place an error becomes an HTTP response; a front door with another error shape passes its builder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from starlette.responses import Response


class APIError(Exception):
    """Base of every error the API returns to a client."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """This error's body in OpenAI's wire format (the default one)."""
        return openai_body(self)

    def response(self, body: ErrorBody | None = None) -> Response:
        """This error as an HTTP response, in OpenAI's wire format unless `body` builds another."""
        return error_response(self) if body is None else error_response(self, body)


class InvalidRequest(APIError):
    """A field of the request is malformed or out of range."""

    status = 400
    type = "invalid_request_error"


class ConflictingFields(InvalidRequest):
    """Two explicit settings in one request contradict each other."""

    code = "conflicting_fields"


class AuthenticationFailed(APIError):
    """Missing, unknown or revoked API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    """The key exists but may not do this."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(APIError):
    """Unknown model or resource."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(APIError):
    """A route exists at this path, but not for this method; `Allow` lists the ones it takes."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class IdempotencyConflict(APIError):
    """A request with the same Idempotency-Key from the same key has not finished yet."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_in_use"


class IdempotencyMismatch(APIError):
    """An Idempotency-Key was sent again with a different request (as payment APIs refuse it). A 409
    like a key still in use (this API answers 400, never 422), told apart by its code."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


class PayloadTooLarge(APIError):
    """The body or one of its images is over a configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(APIError):
    """A body the API reads was not declared `application/json` (refused on a `--no-auth` gateway)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QuotaExceeded(APIError):
    """The key's remaining budget cannot cover the request's worst-case cost."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class RateLimited(APIError):
    """Requests or tokens per minute exceeded; retry after the header's seconds."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class HTTPStatusError(APIError):
    """Any other HTTP error the web framework raises, with its own status (code `http_<status>`)."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=f"http_{status}", headers=headers)
        self.status = status


class InternalError(APIError):
    """An unexpected failure in the gateway: logged where it happened, told to the client in general terms."""

    code = "internal_error"

    def __init__(self, message: str = "Internal error in the gateway; it has been logged.") -> None:
        super().__init__(message)


class UpstreamError(APIError):
    """The engine failed or answered with something the gateway cannot use."""

    status = 502
    type = "upstream_error"
    code = "engine_error"


class EngineUnavailable(APIError):
    """No engine replica is reachable right now."""

    status = 503
    type = "service_unavailable"
    code = "engine_unavailable"

    def __init__(self, message: str = "No engine is available; retry shortly.", *, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class GatewayTimeout(APIError):
    """The engine took the request but sent no response head in time (`upstream_header_timeout_s`);
    the request was abandoned, which stops the engine, and may be retried."""

    status = 504
    type = "timeout"
    code = "engine_timeout"

    def __init__(
        self, message: str = "The engine did not answer in time; retry shortly.", *, retry_after_s: int = 5
    ):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


# -- wire formats --------------------------------------------------------------------------------

ErrorBody = Callable[[APIError], dict[str, Any]]


def openai_body(error: APIError) -> dict[str, Any]:
    """OpenAI's error object, which every OpenAI-compatible client parses."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


# Anthropic's error types by HTTP status (its clients read `error.type`); any other status of ours
# is the closest of them.
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   503: "overloaded_error"}  # fmt: skip


def anthropic_body(error: APIError) -> dict[str, Any]:
    """Anthropic's error object (the Messages API), with our `code` and `param` when there are any."""
    kind = ANTHROPIC_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    detail: dict[str, Any] = {"type": kind, "message": error.message}
    detail.update({name: value for name in ("code", "param") if (value := getattr(error, name)) is not None})
    return {"type": "error", "error": detail}


def error_response(error: APIError, body: ErrorBody = openai_body) -> Response:
    """The HTTP response for `error`, its body built by the wire format's builder."""
    return Response(
        orjson.dumps(body(error)),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


# -- validation ------------------------------------------------------------------------------------


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _param(loc: Sequence[object]) -> str:
    """pydantic's error location as OpenAI names fields: `messages[0].content[1].image_url.url`.

    Union members (`str`, `list[...]`, model names) are dropped, and a discriminated union's tag,
    which pydantic repeats before the field of the same name, is kept once.
    """
    param = ""
    previous: object = None
    for part in loc:
        if part in ("body", "query", "path") and not param:
            continue
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            name = str(part)
            if name in _TYPE_NAMES or "[" in name or "-" in name or name[:1].isupper() or name == previous:
                previous = part
                continue
            param += f".{name}" if param else name
        previous = part
    return param


def validation_error(errors: list[dict[str, Any]]) -> InvalidRequest:
    """Turn pydantic's error list into one 400 that names the first offending field (or says the
    body is not JSON at all)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return InvalidRequest("The body is not valid JSON.", code="invalid_json")
    param = _param(first.get("loc", ())) or None
    message = str(first.get("msg", "invalid value"))
    if param:
        message = f"Invalid value for '{param}': {message}"
    extra = len(errors) - 1
    if extra > 0:
        message += f" (and {extra} more problem{'s' if extra > 1 else ''})"
    return InvalidRequest(message, param=param, code="invalid_value")
