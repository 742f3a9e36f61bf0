"""The FastAPI application: routes, the error handlers, the guards around it (guards.py), the UI."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import MappingProxyType, ModuleType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api import admin, chat, health, messages, models, responses, usage
from app.api.error_docs import openapi_schema
from app.api.guards import BodyLimit, LoopbackGuard, SecurityHeaders, UIFiles, error_shape
from app.core.config import Settings
from app.core.errors import (
    APIError,
    ErrorBody,
    HTTPStatusError,
    InternalError,
    MethodNotAllowed,
    NotFound,
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
# Requests allocate and free thousands of short-lived objects (a chunk's usage, its frame): with the
# default 700, a young collection ran every few chunks. Cycles are rare here, and a higher threshold
# costs little memory (the figures: docs/performance.md).
GC_YOUNG_THRESHOLD = 20_000


class ThinkgateApp(FastAPI):
    """FastAPI, with its hot routes served without the middleware and routing layers: a chat
    completion, a response or a message goes straight to its front door's handler, with the same
    body limit and the same error handlers (the layers were a sizeable share of a short request's
    CPU: docs/performance.md). Everything else, the doors' OpenAPI documentation included, is
    FastAPI's as usual. A middleware added to the app does not see the lanes' requests: the lanes
    must be given its work too, as they are given a BodyLimit of their own
    (`tests/api/test_chat_lane.py` lists the middleware they account for)."""

    # The front doors' POST paths served without the middleware and routing layers, each handler
    # behind the body limit (set by create_app); a path not here goes through FastAPI.
    lanes: Mapping[str, ASGIApp] = MappingProxyType({})
    # --no-auth: every request, the lane's too, passes the loopback guard first.
    guard: LoopbackGuard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.guard is not None and scope["type"] == "http":
            refused = self.guard.refusal(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
        lane = (
            self.lanes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        if lane is not None:
            await lane(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def lane(self, handle: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
        """`handle` as an ASGI app that answers its errors as the exception handlers would."""

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            scope["app"] = self
            request = Request(scope, receive)
            try:
                response = await handle(request)
            except Exception as exc:
                response = await self._handle_error(request, exc)
            await response(scope, receive, send)

        return serve

    async def _handle_error(self, request: Request, exc: Exception) -> Response:
        """What the exception handlers answer for `exc`: the most specific one, as Starlette picks."""
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                response = handler(request, exc)
                return await response if inspect.isawaitable(response) else response
        raise exc


DOORS = (chat, responses, messages)  # route modules with a `PATH` and a `handle(request)`


def _handler_of(door: ModuleType) -> Callable[[Request], Awaitable[Response]]:
    """The door's `handle`, looked up on each request (so that a test can replace it)."""

    async def handle(request: Request) -> Response:
        response: Response = await door.handle(request)
        return response

    return handle


def _install_error_handlers(app: FastAPI) -> None:
    """Every exception that reaches the app is answered as an APIError, by the one builder of error
    bodies (app/core/errors.py)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc, _shape(request))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        return error_response(validation_error(list(exc.errors())), _shape(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(_from_http_exception(request, exc), _shape(request))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, APIError):  # raised inside middleware (body limit)
            return error_response(exc, _shape(request))
        log.exception("unhandled error")
        return error_response(InternalError(), _shape(request))


def _shape(request: Request) -> ErrorBody:
    return error_shape(request.url.path)


def _from_http_exception(request: Request, exc: HTTPException) -> APIError:
    """The web framework's own HTTP errors (no such route, another method) as ours."""
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return NotFound(f"No route {request.method} {request.url.path}")
    if exc.status_code == 405:
        return MethodNotAllowed(str(exc.detail), headers=headers)
    return HTTPStatusError(exc.status_code, str(exc.detail), headers=headers)


def _lifespan(
    settings: Settings, gateway: Gateway | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = gateway or Gateway.build(settings)
        app.state.gateway = built
        await built.start()
        # Everything built so far (the app, its schemas, SQLAlchemy, vendored models) lives as long as
        # the process: out of the collector's sight, its full collections stop walking it.
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
        try:
            yield
        finally:
            await built.stop()

    return lifespan


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    docs = settings.api_docs  # off: no /docs, /redoc or /openapi.json (they describe every route)
    app = ThinkgateApp(
        title="Thinkgate",
        version=__version__,
        description="OpenAI-compatible gateway for long-CoT and short-CoT reasoning from one set of weights.",
        lifespan=_lifespan(settings, gateway),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    _install_error_handlers(app)
    app.include_router(chat.router, tags=["chat"])
    app.include_router(responses.router, tags=["responses"])
    app.include_router(messages.router, tags=["messages"])
    app.include_router(models.router, tags=["models"])
    app.include_router(health.router, tags=["operations"])
    app.include_router(usage.router, tags=["usage"])
    app.include_router(admin.router, tags=["admin"])
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]

    csp_file = UI_DIR / "csp.txt"
    csp = csp_file.read_text().strip() if csp_file.exists() else DEFAULT_CSP

    if (UI_DIR / "index.html").exists():
        app.mount("/", UIFiles(app, StaticFiles(directory=UI_DIR, html=True)), name="ui")
    app.add_middleware(SecurityHeaders, csp=csp)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.lanes = {
        door.PATH: BodyLimit(app.lane(_handler_of(door)), settings.max_request_bytes) for door in DOORS
    }
    if settings.no_auth:
        app.guard = LoopbackGuard(settings.host, settings.port)
    return app
