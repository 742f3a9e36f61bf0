"""The FastAPI application: routes, OpenAI-shaped error handling, body limits, the UI."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api import admin, chat, health, models, usage
from app.core.config import Settings
from app.core.errors import (
    APIError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    error_response,
    validation_error,
)
from app.pipeline.gateway import Gateway

log = logging.getLogger("thinkgate")
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await too_large.response()(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """CSP and friends on the UI's pages (pure ASGI: the API's streams pass untouched)."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.extra]
            await send(message)

        await self.app(scope, receive, with_headers)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class LoopbackGuard:
    """`--no-auth` keeps a web page the user visits from using the gateway (pure ASGI, cheap: it
    runs before the chat lane too, see ThinkgateApp).

    Without keys, the browser is the only thing between a page and the gateway on 127.0.0.1:
    - DNS rebinding: a page on attacker.example rebinds the name to 127.0.0.1 and talks to us as the
      same origin, but its requests say `Host: attacker.example`. The Host must name the bound
      address: localhost, 127.0.0.1, [::1] or the configured host, with the bound port or none.
    - A cross-site request: the browser says where it comes from in `Origin`; when present it must be
      one of those hosts, on the bound port or the Host's own (the bundled UI's same-origin fetches).
    - A "simple" cross-site POST (text/plain, a form) needs no CORS preflight: bodies sent to /v1/
      must be declared `application/json`, which a page on another origin cannot send without one.
    """

    def __init__(self, host: str, port: int) -> None:
        self.hosts = frozenset({"localhost", "127.0.0.1", "::1", host.strip("[]").lower()})
        self.port = port
        # The common exact headers, answered without parsing.
        names = [f"[{h}]" if ":" in h else h for h in self.hosts]
        self.fast_hosts = frozenset(value.encode() for name in names for value in (name, f"{name}:{port}"))
        self.fast_origins = frozenset(f"http://{name}:{port}".encode() for name in names)

    def refusal(self, scope: Scope) -> Response | None:
        """The answer that refuses this request, or None to let it through."""
        host = origin = content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = value.strip() not in (b"", b"0")
            elif name == b"transfer-encoding":
                has_body = True
        server = scope.get("server")
        ports = (self.port, server[1]) if server else (self.port,)  # the configured port may be 0
        if host is None or (host not in self.fast_hosts and not self._host_allowed(host, ports)):
            return PermissionDenied(
                "This gateway runs without API keys (--no-auth) and answers only requests addressed to "
                "its loopback address (Host: 127.0.0.1, localhost or [::1], with its port).",
                code="host_not_allowed",
            ).response()
        if (
            origin is not None
            and origin not in self.fast_origins
            and not self._origin_allowed(origin, host, ports)
        ):
            return PermissionDenied(
                "This gateway runs without API keys (--no-auth): requests from web pages of other origins "
                "are refused.",
                code="origin_not_allowed",
            ).response()
        method = scope["method"]
        # A body the API reads (a DELETE usually has none) must be declared JSON.
        body = method in _BODY_METHODS and (has_body or content_type is not None or method != "DELETE")
        if body and scope["path"].startswith("/v1/") and not _is_json(content_type):
            return error_response(
                415,
                {
                    "error": {
                        "message": "The request body must be sent with the header "
                        "'Content-Type: application/json'.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "unsupported_media_type",
                    }
                },
            )
        return None

    def _host_allowed(self, host: bytes, ports: tuple[int, ...]) -> bool:
        found = _authority(host)
        return found is not None and found[0] in self.hosts and (found[1] is None or found[1] in ports)

    def _origin_allowed(self, origin: bytes, host: bytes, ports: tuple[int, ...]) -> bool:
        """Same origin as the gateway: an allowed host, on the bound port or on the Host's own."""
        scheme, sep, authority = origin.partition(b"://")
        default = _DEFAULT_PORTS.get(scheme.decode("latin-1")) if sep else None
        found = _authority(authority) if default is not None else None
        if default is None or found is None or found[0] not in self.hosts:
            return False
        port = found[1] or default
        host_port = (_authority(host) or ("", None))[1]
        return port in ports or port == (host_port or default)


def _authority(text: bytes) -> tuple[str, int | None] | None:
    """`host[:port]` → (lower-case host without brackets, port or None); None if it is not one."""
    value = text.decode("latin-1")
    if not value or any(c in value for c in "@/?#\\ "):
        return None
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json"


class UIFiles:
    """The bundled UI's files, mounted at "/": they answer whatever no route took. Not quite
    everything: a path of an API route asked with another method is a 405 in the API's error shape
    (the mount would take it as a file), and a path under /v1 that no route has is a 404 in that
    shape (a POST to the mount was a plain-text 405)."""

    def __init__(self, app: FastAPI, files: ASGIApp) -> None:
        self.app = app
        self.files = files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.files(scope, receive, send)
            return
        path = scope["path"]
        allowed: set[str] = set()
        for route in self.app.router.routes:
            if isinstance(route, Route) and route.methods and route.matches(scope)[0] == Match.PARTIAL:
                allowed |= route.methods
        if allowed:
            method = scope["method"]
            response = error_response(
                405,
                {
                    "error": {
                        "message": f"{path} does not take {method}; it takes {', '.join(sorted(allowed))}.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "method_not_allowed",
                    }
                },
                {"Allow": ", ".join(sorted(allowed))},
            )
        elif path == "/v1" or path.startswith("/v1/"):
            response = NotFound(f"No route {scope['method']} {path}").response()
        else:
            await self.files(scope, receive, send)
            return
        await response(scope, receive, send)


class ThinkgateApp(FastAPI):
    """FastAPI, with its hot route served without the middleware and routing layers: a chat
    completion goes straight to its handler, with the same body limit and the same error handlers
    (measured at 64 streams: the layers were about a sixth of a short request's CPU). Everything
    else, the chat route's OpenAPI documentation included, is FastAPI's as usual. A middleware
    added to the app does not see chat completions: the lane must be given its work too, as it is
    given a BodyLimit of its own (`tests/test_chat_lane.py` lists the middleware it accounts for)."""

    # `serve_chat` behind the body limit, set by create_app; None: chat completions go through FastAPI.
    chat_lane: ASGIApp | None = None
    # --no-auth: every request, the lane's too, passes the loopback guard first.
    guard: LoopbackGuard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.guard is not None and scope["type"] == "http":
            refused = self.guard.refusal(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        lane = self.chat_lane
        is_chat = scope["type"] == "http" and scope["path"] == chat.PATH and scope["method"] == "POST"
        if lane is not None and is_chat:
            await lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def serve_chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await chat.handle(request)
        except Exception as exc:
            response = await self._handle_error(request, exc)
        await response(scope, receive, send)

    async def _handle_error(self, request: Request, exc: Exception) -> Response:
        """What the exception handlers answer for `exc`: the most specific one, as Starlette picks."""
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                response = handler(request, exc)
                return await response if inspect.isawaitable(response) else response
        raise exc


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return InvalidRequest("The body is not valid JSON.", code="invalid_json").response()
        return validation_error(errors).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return NotFound(f"No route {request.method} {request.url.path}").response()
        code = "method_not_allowed" if exc.status_code == 405 else f"http_{exc.status_code}"
        body = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
        return error_response(exc.status_code, body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        if isinstance(exc, APIError):  # raised inside middleware (body limit)
            return exc.response()
        log.exception("unhandled error")
        body = {
            "error": {
                "message": "Internal error in the gateway; it has been logged.",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        }
        return error_response(500, body)


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = error
    # Validation errors are 400s in OpenAI's shape, never FastAPI's 422.
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault(
                    "400",
                    {
                        "description": "Invalid request",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                        },
                    },
                )
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = gateway or Gateway.build(settings)
        app.state.gateway = built
        await built.start()
        # Everything built so far (the app, its schemas, SQLAlchemy, vendored models) lives as long as
        # the process: out of the collector's sight, its full collections stop walking it (measured at
        # 64 streams, three alternating pairs: 10, 15 and 33 % less gateway CPU per request).
        gc.freeze()
        # Requests allocate and free thousands of short-lived objects (a chunk's usage, its frame):
        # with the default 700, a young collection ran every few chunks. Cycles are rare here, and
        # 20,000 costs little memory (bench.run, 64 streams: 0.73 against 0.80 ms of CPU a request).
        gc.set_threshold(20_000, 20, 20)
        try:
            yield
        finally:
            await built.stop()

    docs = settings.api_docs  # off: no /docs, /redoc or /openapi.json (they describe every route)
    app = ThinkgateApp(
        title="Thinkgate",
        version=__version__,
        description="OpenAI-compatible gateway for long-CoT and short-CoT reasoning from one set of weights.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    _install_error_handlers(app)
    app.include_router(chat.router, tags=["chat"])
    app.include_router(models.router, tags=["models"])
    app.include_router(health.router, tags=["operations"])
    app.include_router(usage.router, tags=["usage"])
    app.include_router(admin.router, tags=["admin"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    csp_file = UI_DIR / "csp.txt"
    csp = csp_file.read_text().strip() if csp_file.exists() else DEFAULT_CSP

    if (UI_DIR / "index.html").exists():
        app.mount("/", UIFiles(app, StaticFiles(directory=UI_DIR, html=True)), name="ui")
    app.add_middleware(SecurityHeaders, csp=csp)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.chat_lane = BodyLimit(app.serve_chat, max_bytes=settings.max_request_bytes)
    if settings.no_auth:
        app.guard = LoopbackGuard(settings.host, settings.port)
    return app
