"""The chat route's direct dispatch (`api/app.py: ThinkgateApp`): `POST /v1/chat/completions` skips
the middleware and routing layers, so it must still get what they do for it — the body limit and
the exception handlers — and nothing else may be expected of them. The real application, its lifespan
not started (no engine or database needed): the handler is replaced where a test needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from app.api import app as app_module
from app.api import chat
from app.core.config import Settings
from app.core.errors import RateLimited

SETTINGS = Settings(upstreams=["http://127.0.0.1:9"], database_url="sqlite+aiosqlite:///:memory:")
URL = "/v1/chat/completions"


def client() -> httpx.AsyncClient:
    app = app_module.create_app(SETTINGS.model_copy(update={"max_request_bytes": 4096}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def test_the_lane_redoes_every_middleware_the_app_has() -> None:
    """A middleware added to the app would not see chat requests: adding one must come with the
    lane doing its work too (and this list growing)."""
    app = app_module.create_app(SETTINGS)
    assert [m.cls for m in app.user_middleware] == [app_module.BodyLimit, app_module.SecurityHeaders]
    # SecurityHeaders leaves /v1/ alone; the lane sits behind a BodyLimit of its own (tests below).


async def test_an_unexpected_error_is_an_openai_shaped_500(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat, "handle", broken)
    async with client() as http:
        response = await http.post(URL, json={})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "Internal error in the gateway; it has been logged.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }


async def test_api_errors_get_their_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    async def limited(request: Request) -> Response:
        raise RateLimited("Slow down.", retry_after_s=7)

    monkeypatch.setattr(chat, "handle", limited)
    async with client() as http:
        response = await http.post(URL, json={})
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_the_body_limit_holds_with_and_without_a_length(monkeypatch: pytest.MonkeyPatch) -> None:
    async def reads(request: Request) -> Response:
        return Response(str(len(await request.body())))

    async def chunked(size: int) -> AsyncIterator[bytes]:
        for _ in range(size // 1024):
            yield b"x" * 1024

    monkeypatch.setattr(chat, "handle", reads)
    async with client() as http:
        assert (await http.post(URL, content=b"x" * 4096)).text == "4096"
        assert (await http.post(URL, content=chunked(4096))).text == "4096"
        by_length = await http.post(URL, content=b"x" * 4097)
        streamed = await http.post(URL, content=chunked(5120))
        for too_big in (by_length, streamed):
            assert too_big.status_code == 413
            assert too_big.json()["error"]["code"] == "payload_too_large"


async def test_other_routes_still_go_through_fastapi() -> None:
    async with client() as http:
        missing = await http.get("/v1/nothing-here")
        wrong_method = await http.get(URL)
    # Neither is the lane's: the API's answers (tests/adversarial/test_api_routes.py), as before the lane.
    assert (missing.status_code, wrong_method.status_code) == (404, 405)
    for response in (missing, wrong_method):
        assert response.json()["error"]["type"] == "invalid_request_error"
