"""Item 14: under /v1/, an unknown path is a 404 and a known path with the wrong method a 405, both
in the API's error shape; before, the UI's static mount at "/" answered them (a plain-text 405 for
any POST, a 404 page for a GET). Paths outside /v1/ still serve the UI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import GatewayProcess, free_port, start_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("routes")
    with start_gateway(workdir, upstreams=[f"http://127.0.0.1:{free_port()}"], wait_ready=False) as gateway:
        gateway.api_key = gateway.create_key("routes")
        yield gateway


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/nothing-here"),
        ("POST", "/v1/chat/completion"),
        ("GET", "/v1/nothing-here"),
        ("PUT", "/v1/embeddings"),
        ("POST", "/v1/"),
        ("POST", "/v1"),
        ("DELETE", "/v1/admin/nothing"),
    ],
)
def test_an_unknown_api_path_is_an_api_404(gateway: GatewayProcess, method: str, path: str) -> None:
    response = httpx.request(
        method, f"{gateway.base_url}{path}", headers={"Authorization": f"Bearer {gateway.api_key}"}, json={}
    )
    error = error_of(response, 404, "not_found")
    assert path in str(error["message"])


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/chat/completions", {"POST"}),
        ("PUT", "/v1/chat/completions", {"POST"}),
        ("POST", "/v1/models", {"GET"}),
        ("DELETE", "/v1/models", {"GET"}),
        ("PUT", "/v1/admin/keys/key_0123", {"GET", "PATCH", "DELETE"}),
        ("POST", "/v1/usage", {"GET"}),
        ("HEAD", "/v1/chat/completions", {"POST"}),
    ],
)
def test_a_known_api_path_with_the_wrong_method_is_an_api_405(
    gateway: GatewayProcess, method: str, path: str, allowed: set[str]
) -> None:
    response = httpx.request(method, f"{gateway.base_url}{path}", json={})
    if method == "HEAD":  # no body to a HEAD
        assert response.status_code == 405
    else:
        assert method in str(error_of(response, 405, "method_not_allowed")["message"])
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def test_the_ui_is_still_served_outside_v1(gateway: GatewayProcess) -> None:
    page = httpx.get(f"{gateway.base_url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "content-security-policy" in page.headers
    assert httpx.get(f"{gateway.base_url}/js/api.js").status_code == 200
    assert httpx.get(f"{gateway.base_url}/health").json() == {"status": "ok"}


def test_the_api_still_answers_its_routes(gateway: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 200
    assert httpx.get(f"{gateway.base_url}/v1/balance", headers=headers).status_code == 200
    chat = httpx.post(f"{gateway.base_url}/v1/chat/completions", headers=headers, json={"model": 1})
    assert chat.status_code == 400  # the chat route itself (validation), not a routing error


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/messages/nothing-here", 404),
        ("GET", "/v1/messages", 405),
        ("GET", "/v1/messages/count_tokens", 405),
    ],
)
def test_the_messages_api_answers_in_anthropics_shape(
    gateway: GatewayProcess, method: str, path: str, status: int
) -> None:
    """Under /v1/messages (the Anthropic Messages API) the same errors come in Anthropic's shape."""
    response = httpx.request(
        method, f"{gateway.base_url}{path}", headers={"x-api-key": gateway.api_key}, json={}
    )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
    assert body["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error"), body
