"""The ASGI guards around the application: body limit, security headers, the `--no-auth` loopback
guard, and the bundled UI's files with the API's answers for what no route takes.

All pure ASGI (no Starlette middleware objects): the API's streams pass them untouched. The chat lane
(`app.py: ThinkgateApp`) skips the middleware stack, so it is given the guards it needs itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import (
    ErrorBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    UnsupportedMediaType,
    anthropic_body,
    error_response,
    openai_body,
)

# The Anthropic Messages API's routes answer errors in Anthropic's shape.
MESSAGES_PREFIX = "/v1/messages"


def error_shape(path: str) -> ErrorBody:
    """The error body of a route's wire format: Anthropic's on the Messages API, else OpenAI's."""
    return anthropic_body if path.startswith(MESSAGES_PREFIX) else openai_body


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
                await error_response(too_large, error_shape(scope["path"]))(scope, receive, send)
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
            ).response(error_shape(scope["path"]))
        if (
            origin is not None
            and origin not in self.fast_origins
            and not self._origin_allowed(origin, host, ports)
        ):
            return PermissionDenied(
                "This gateway runs without API keys (--no-auth): requests from web pages of other origins "
                "are refused.",
                code="origin_not_allowed",
            ).response(error_shape(scope["path"]))
        method = scope["method"]
        # A body the API reads (a DELETE usually has none) must be declared JSON.
        body = method in _BODY_METHODS and (has_body or content_type is not None or method != "DELETE")
        if body and scope["path"].startswith("/v1/") and not _is_json(content_type):
            return UnsupportedMediaType(
                "The request body must be sent with the header 'Content-Type: application/json'."
            ).response(error_shape(scope["path"]))
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
            methods = ", ".join(sorted(allowed))
            response = MethodNotAllowed(
                f"{path} does not take {scope['method']}; it takes {methods}.", headers={"Allow": methods}
            ).response(error_shape(path))
        elif path == "/v1" or path.startswith("/v1/"):
            response = NotFound(f"No route {scope['method']} {path}").response(error_shape(path))
        else:
            await self.files(scope, receive, send)
            return
        await response(scope, receive, send)
