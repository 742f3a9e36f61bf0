"""The FastAPI application: routes, OpenAI-shaped error handling, body limits, the UI."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api import admin, chat, health, models, usage
from app.config import Settings
from app.errors import APIError, InvalidRequest, NotFound, PayloadTooLarge, error_response, validation_error
from app.gateway import Gateway

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


class ThinkgateApp(FastAPI):
    """FastAPI, with its hot route served without the middleware and routing layers: a chat
    completion goes straight to its handler, with the same body limit and the same error handlers
    (measured at 64 streams: the layers were about a sixth of a short request's CPU). Everything
    else, the chat route's OpenAPI documentation included, is FastAPI's as usual. A middleware
    added to the app does not see chat completions: the lane must be given its work too, as it is
    given a BodyLimit of its own (`tests/test_chat_lane.py` lists the middleware it accounts for)."""

    # `serve_chat` behind the body limit, set by create_app; None: chat completions go through FastAPI.
    chat_lane: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        body = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": f"http_{exc.status_code}",
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

    app = ThinkgateApp(
        title="Thinkgate",
        version=__version__,
        description="OpenAI-compatible gateway for long-CoT and short-CoT reasoning from one set of weights.",
        lifespan=lifespan,
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
        app.mount("/", StaticFiles(directory=UI_DIR, html=True), name="ui")
    app.add_middleware(SecurityHeaders, csp=csp)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.chat_lane = BodyLimit(app.serve_chat, max_bytes=settings.max_request_bytes)
    return app
