"""Item 10: a `--no-auth` gateway on loopback must not be usable by a web page the user visits.

A page on another origin can POST a `text/plain` body without a CORS preflight (a "simple"
request), and a page on a name it rebinds to 127.0.0.1 (DNS rebinding) sends `Host: its-name`.
In --no-auth mode the gateway answers only requests whose Host names the bound address, whose
Origin (when sent) is one of those hosts, and whose /v1/ bodies are declared JSON. The chat route
skips the middleware stack (api/app.py: ThinkgateApp), so it is checked on its own here. The bundled
UI, same-origin and JSON, keeps working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import GatewayProcess, start_gateway

pytestmark = pytest.mark.slow

CHAT = {"model": "fake-reasoner", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def open_gateway(fake_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("no-auth")
    with start_gateway(workdir, upstreams=[fake_engine], args=("--no-auth",)) as gateway:
        yield gateway


def _port(gateway: GatewayProcess) -> int:
    return int(gateway.base_url.rsplit(":", 1)[1])


def assert_api_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_cross_site_simple_post_to_the_chat_route_is_refused(
    open_gateway: GatewayProcess, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(
        f"{open_gateway.base_url}/v1/chat/completions", content=json.dumps(CHAT), headers=headers, timeout=30
    )
    error = assert_api_error(response, 415, "unsupported_media_type")
    assert "Content-Type" in str(error["message"])


def test_a_text_plain_post_to_another_api_route_is_refused(open_gateway: GatewayProcess) -> None:
    body = json.dumps({"model": "fake-reasoner", "messages": CHAT["messages"]})
    response = httpx.post(
        f"{open_gateway.base_url}/v1/tokenizers/estimate-token-count",
        content=body,
        headers={"Content-Type": "text/plain"},
        timeout=30,
    )
    assert_api_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example:{port}",
        "attacker.example",
        "127.0.0.1.nip.io:{port}",
        "localhost:1",
        "evil@127.0.0.1",
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/ready"), ("GET", "/")],
)
def test_a_foreign_host_is_refused_everywhere(
    open_gateway: GatewayProcess, host: str, method: str, path: str
) -> None:
    """DNS rebinding: the browser believes it talks to attacker.example, which now resolves to us."""
    headers = {"Host": host.format(port=_port(open_gateway)), "Content-Type": "application/json"}
    response = httpx.request(
        method, f"{open_gateway.base_url}{path}", headers=headers, json=CHAT if method == "POST" else None
    )
    assert_api_error(response, 403, "host_not_allowed")


@pytest.mark.parametrize(
    "origin",
    ["https://attacker.example", "http://127.0.0.1:1", "null", "http://localhost.attacker.example"],
)
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/v1/models")])
def test_a_foreign_origin_is_refused(
    open_gateway: GatewayProcess, origin: str, method: str, path: str
) -> None:
    headers = {"Origin": origin}
    response = httpx.request(
        method, f"{open_gateway.base_url}{path}", headers=headers, json=CHAT if method == "POST" else None
    )
    assert_api_error(response, 403, "origin_not_allowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_same_origin_ui_keeps_working(open_gateway: GatewayProcess, host: str) -> None:
    """What the bundled UI sends: the page from http://host:port, then fetch() with JSON."""
    port = _port(open_gateway)
    origin = f"http://{host}:{port}"
    with httpx.Client(base_url=open_gateway.base_url, headers={"Host": f"{host}:{port}"}, timeout=30) as http:
        assert http.get("/").status_code == 200
        assert http.get("/ui/config.json").json()["auth_required"] is False
        assert http.get("/v1/models", headers={"Origin": origin}).status_code == 200
        chat = http.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Origin": origin, "Accept": "text/event-stream"},
        )
        assert chat.status_code == 200, chat.text
        assert chat.text.rstrip().endswith("data: [DONE]")
        # A charset parameter is still JSON; a host without its port is the same host.
        plain = http.post(
            "/v1/chat/completions",
            content=json.dumps(CHAT),
            headers={"Content-Type": "application/json; charset=utf-8", "Host": host},
        )
        assert plain.status_code == 200, plain.text


def test_a_gateway_with_keys_is_not_restricted(fake_engine: str, tmp_path: Path) -> None:
    """With auth, a cross-site page cannot send the key (it would need a preflight): no checks."""
    with start_gateway(tmp_path, upstreams=[fake_engine]) as gateway:
        key = gateway.create_key("k")
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            content=json.dumps(CHAT),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "text/plain",
                "Origin": "https://x.example",
            },
            timeout=30,
        )
    assert response.status_code == 200, response.text
