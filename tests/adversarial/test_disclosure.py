"""Item 9, disclosure: what an unauthenticated caller learns about the deployment.

`/ready` is a probe: anyone may ask, but only the admin key learns the engines' URLs, errors and
the embedded engine's log path. `/docs`, `/redoc` and `/openapi.json` can be switched off. A key
creation that fails in the database does not put the new secret's hash in a log or on a terminal.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.app import create_app
from app.cli.main import build_parser, settings_from_args
from app.core.config import Settings
from tests.support import ROOT, THINKGATE, GatewayProcess, free_port, start_gateway

HASH = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def dead_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    """A gateway with auth whose only engine does not answer (so /ready says why, to the admin)."""
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(tmp_path_factory.mktemp("ready"), upstreams=[dead], wait_ready=False) as gateway:
        gateway.api_key = gateway.create_key("user")
        yield gateway, dead


@pytest.mark.slow
def test_ready_tells_an_anonymous_caller_only_its_status(dead_gateway: tuple[GatewayProcess, str]) -> None:
    gateway, dead = dead_gateway
    for headers in ({}, {"Authorization": f"Bearer {gateway.api_key}"}, {"Authorization": "Bearer nonsense"}):
        ready = httpx.get(f"{gateway.base_url}/ready", headers=headers, timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.headers["retry-after"] == "5"
        assert ready.json() == {"status": "starting"}, headers
        assert dead.split("//")[1] not in ready.text


@pytest.mark.slow
def test_ready_gives_the_admin_the_replicas(dead_gateway: tuple[GatewayProcess, str]) -> None:
    gateway, dead = dead_gateway
    ready = httpx.get(
        f"{gateway.base_url}/ready", headers={"Authorization": f"Bearer {gateway.admin_key}"}, timeout=10
    )
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    body = ready.json()
    assert body["status"] == "starting"
    assert [r["url"] for r in body["replicas"]] == [dead]
    assert body["replicas"][0]["healthy"] is False


@pytest.mark.slow
def test_ready_of_a_healthy_gateway_is_a_bare_200(fake_engine: str, tmp_path: Path) -> None:
    with start_gateway(tmp_path, upstreams=[fake_engine]) as gateway:
        ready = httpx.get(f"{gateway.base_url}/ready", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        assert "retry-after" not in ready.headers


@pytest.mark.slow
def test_no_auth_loopback_gateway_shows_the_replicas_to_its_local_caller(
    fake_engine: str, tmp_path: Path
) -> None:
    """The choice for --no-auth (loopback only, Host and Origin checked): the local caller is the
    operator, and tests/conftest.py finds the embedded engine's URL this way."""
    with start_gateway(tmp_path, upstreams=[fake_engine], args=("--no-auth",)) as gateway:
        body = httpx.get(f"{gateway.base_url}/ready", timeout=10).json()
    assert body["replicas"][0]["url"] == fake_engine


def _docs_status(settings: Settings) -> dict[str, int]:
    """The status of each documentation route of the real app (the docs need no engine or
    database: the lifespan is not started)."""
    transport = httpx.ASGITransport(app=create_app(settings))

    async def get_all() -> dict[str, int]:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
            return {path: (await http.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json")}

    return asyncio.run(get_all())


SETTINGS = Settings(upstreams=["http://127.0.0.1:9"], database_url="sqlite+aiosqlite:///:memory:")


def test_api_docs_are_on_by_default() -> None:
    assert _docs_status(SETTINGS) == {"/docs": 200, "/redoc": 200, "/openapi.json": 200}


def test_api_docs_can_be_switched_off_by_environment_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKGATE_API_DOCS", "false")
    from_env = Settings(upstreams=["http://127.0.0.1:9"], database_url="sqlite+aiosqlite:///:memory:")
    monkeypatch.delenv("THINKGATE_API_DOCS")
    from_flag = settings_from_args(build_parser().parse_args(["serve", "--upstream", "http://127.0.0.1:9",
                                                               "--no-api-docs"]))  # fmt: skip
    for settings in (from_env, from_flag):
        statuses = _docs_status(settings.model_copy(update={"database_url": "sqlite+aiosqlite:///:memory:"}))
        assert statuses == {"/docs": 404, "/redoc": 404, "/openapi.json": 404}


def _refuse_key_inserts(database_url: str) -> None:
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse_keys BEFORE INSERT ON api_keys "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )


@pytest.mark.slow
def test_a_failed_key_creation_through_the_api_logs_no_hash(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with start_gateway(tmp_path, upstreams=[dead], wait_ready=False) as gateway:
        _refuse_key_inserts(gateway.database_url)
        response = httpx.post(
            f"{gateway.base_url}/v1/admin/keys",
            json={"name": "doomed"},
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
            timeout=30,
        )
        assert response.status_code == 500, response.text
        assert response.json()["error"]["type"] == "server_error"
        assert not HASH.search(response.text)
    log = gateway.log()
    assert "api_keys" in log or "key" in log  # the failure is logged...
    assert not HASH.search(log), log[-3000:]  # ...without the secret's hash


@pytest.mark.slow
def test_a_failed_key_creation_on_the_command_line_prints_no_hash(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'keys.db'}"
    subprocess.run([*THINKGATE, "--database-url", database_url, "keys", "list"], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    _refuse_key_inserts(database_url)
    result = subprocess.run(
        [*THINKGATE, "--database-url", database_url, "keys", "create", "--name", "doomed"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "disk on fire" in result.stderr  # the reason is told...
    assert not HASH.search(result.stdout + result.stderr), result.stderr  # ...the hash is not
