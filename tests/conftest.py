"""Shared fixtures: the real vLLM engine (once per session) and real gateway processes in front of it.

Set THINKGATE_TEST_ENGINE_URL to reuse an engine you already run (saves its ~75 s start-up while
developing); otherwise the session starts one on the bundled model through the product's own launcher.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import ROOT, Engine, GatewayProcess, free_port, start_gateway, wait_http_ok


def progress(config: pytest.Config, message: str) -> None:
    """Print past pytest's output capture: long set-up steps show progress as they happen."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(message, flush=True)
        return
    with capture.global_and_fixture_disabled():
        print(message, flush=True)


def _wait_engine(config: pytest.Config, gateway: GatewayProcess, timeout_s: float = 900.0) -> str:
    """Wait for the embedded engine behind `gateway`, printing progress; returns the engine's URL."""
    started = time.monotonic()
    next_report = 0.0
    while (elapsed := time.monotonic() - started) < timeout_s:
        if gateway.process.poll() is not None:
            raise AssertionError(f"gateway exited ({gateway.process.returncode}):\n{gateway.log()[-4000:]}")
        # The replicas are shown to the admin key (and to the local caller of a --no-auth gateway).
        admin = {"Authorization": f"Bearer {gateway.admin_key}"}
        ready = httpx.get(f"{gateway.base_url}/ready", headers=admin, timeout=5)
        if ready.status_code == 200:
            progress(config, f"[engine] ready after {elapsed:.0f} s")
            return str(ready.json()["replicas"][0]["url"])
        if elapsed >= next_report:
            progress(config, f"\n[engine] starting vLLM on the bundled model… {elapsed:.0f} s")
            next_report = elapsed + 15
        time.sleep(1)
    raise AssertionError(f"embedded engine not ready after {timeout_s} s:\n{gateway.log()[-4000:]}")


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Engine]:
    """The real vLLM engine on the bundled model, started by `thinkgate serve` in embedded mode.

    The session's other gateways use its URL as their upstream. When the session ends, the embedded
    gateway gets SIGTERM, and the engine's whole process group must be gone with it.
    """
    external = os.environ.get("THINKGATE_TEST_ENGINE_URL")
    if external:
        yield Engine(external.rstrip("/"))
        return
    workdir = tmp_path_factory.mktemp("embedded")
    with start_gateway(
        workdir,
        upstreams=[],
        args=("--no-auth", "--engine-log", str(workdir / "engine.log")),
        wait_ready=False,
    ) as embedded:
        url = _wait_engine(pytestconfig, embedded)
        yield Engine(url, embedded=embedded)
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{url}/v1/models", timeout=2)
        raise AssertionError(f"the embedded engine at {url} still answers after its gateway stopped")


@pytest.fixture(scope="session")
def gateway(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway process in front of the engine, with a SQLite ledger and one API key."""
    workdir = tmp_path_factory.mktemp("gateway")
    with start_gateway(workdir, upstreams=[engine.url]) as process:
        process.api_key = process.create_key("session")
        yield process


@pytest.fixture()
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {gateway.api_key}"}, timeout=300
    ) as http:
        yield http


@pytest.fixture(scope="session")
def fake_engine() -> Iterator[str]:
    """The URL of bench/fake_engine.py (vLLM-shaped, no model) serving `fake-reasoner`, 8 tokens a stream."""
    port = free_port()
    command = [sys.executable, "-m", "bench.fake_engine", "--port", str(port), "--tokens", "8"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/v1/models", process=process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


pytest_plugins = ["tests.pg"]  # the PostgreSQL server fixtures (tests/pg.py)


# The fixtures that need a marker, by the module that defines them: a test module may define its own
# fixture of the same name (test_billing.py's `engine` is a scripted engine), which needs none.
# `gateway` and `client` depend on `engine`; `postgres_url` on `postgres_server`.
NEEDS_MARKER = {
    ("tests.conftest", "engine"): "engine",
    ("tests.pg", "postgres_server"): "postgres",
}
NEEDS_MARKER_BY_NAME = {"browser": "browser"}  # Playwright's browser (tests/ui/conftest.py)


def _markers_needed(item: pytest.Item) -> dict[str, str]:
    """marker -> the fixture that needs it, for every fixture `item` really uses (overrides resolved)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return {}
    needed = {}
    for name in item.fixturenames:  # the closure: fixtures used directly or through other fixtures
        if name in NEEDS_MARKER_BY_NAME:
            needed[NEEDS_MARKER_BY_NAME[name]] = name
        # The last definition is the one in force; it reaches the one before only by requesting its name.
        for fixturedef in reversed(info.name2fixturedefs.get(name, ())):
            marker = NEEDS_MARKER.get((getattr(fixturedef.func, "__module__", ""), name))
            if marker is not None:
                needed[marker] = name
                break
            if name not in fixturedef.argnames:
                break
    return needed


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: a wrong mark fails every layer, the fast one too
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the run when a test uses the real engine, PostgreSQL or a browser without its marker:
    unmarked, it would start them in the layers that promise not to (`make test-fast`)."""
    problems = [
        f"{item.nodeid}: uses the `{fixture}` fixture but is not marked `{marker}`"
        for item in items
        for marker, fixture in _markers_needed(item).items()
        if item.get_closest_marker(marker) is None
    ]
    if problems:
        raise pytest.UsageError("tests without the marker their fixtures need:\n  " + "\n  ".join(problems))
