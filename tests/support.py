"""Test helpers: run the real `thinkgate` CLI as subprocesses on free loopback ports; read glyph grids."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.engine.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
THINKGATE = [sys.executable, "-m", "app.cli"]


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'thinkgate.db'}"


def run_cli(*args: str, database_url: str, env: dict[str, str] | None = None) -> str:
    """Run `thinkgate ARGS` against a database; returns stdout, fails loudly with stderr."""
    result = subprocess.run(
        [*THINKGATE, "--database-url", database_url, *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"thinkgate {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@dataclass
class Engine:
    """The real engine of the test session (see the `engine` fixture in conftest.py)."""

    url: str
    model: str = "thinkgate-arith"
    embedded: GatewayProcess | None = field(default=None, repr=False)


@dataclass
class GatewayProcess:
    base_url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str = ""
    admin_key: str = field(default="", repr=False)
    extra: dict[str, str] = field(default_factory=dict)

    def create_key(self, name: str, *flags: str) -> str:
        return (
            run_cli("keys", "create", "--name", name, *flags, database_url=self.database_url)
            .strip()
            .splitlines()[-1]
        )

    def cli(self, *args: str) -> str:
        return run_cli(*args, database_url=self.database_url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        self.process.wait(timeout=30)


def usage_records(
    database_url: str, where: str = "1 = 1", params: tuple[object, ...] = ()
) -> list[sqlite3.Row]:
    """Rows of a SQLite gateway's usage ledger, read straight from the database file."""
    path = re.sub(r"^sqlite(\+aiosqlite)?:///", "", database_url)
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return db.execute(f"SELECT * FROM usage_records WHERE {where}", params).fetchall()


def wait_http(url: str, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def start_gateway(
    workdir: Path,
    *,
    upstreams: list[str],
    database_url: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait_ready: bool = True,
    admin_key: str | None = None,
) -> Iterator[GatewayProcess]:
    """`thinkgate serve` as a real process; stopped (SIGTERM) when the block ends.

    The admin key goes in through the environment (`THINKGATE_ADMIN_KEY`, never the command line,
    where `ps` shows it): `admin_key`, or a random one, unless `env` or `args` bring their own."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(env or {})
    if not any(arg.startswith("--admin-key") for arg in args):
        admin_key = env.setdefault("THINKGATE_ADMIN_KEY", admin_key or "tg-admin-" + secrets.token_hex(16))
    port = port or free_port()
    database_url = database_url or sqlite_url(workdir)
    command = [*THINKGATE, "serve", "--port", str(port), "--database-url", database_url, *args]
    for upstream in upstreams:
        command += ["--upstream", upstream]
    log_path = workdir / f"gateway-{port}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "THINKGATE_HEALTH_INTERVAL_S": "1", **env},
        )  # fmt: skip
    gateway = GatewayProcess(
        f"http://127.0.0.1:{port}", database_url, process, log_path, admin_key=admin_key or ""
    )
    try:
        wait_http(f"{gateway.base_url}/health", process=process)
        if wait_ready and upstreams:
            wait_http_ok(f"{gateway.base_url}/ready", process=process)
        yield gateway
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_http_ok(url: str, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout_s} s")


def query_db(database_url: str, sql: str, **params: object) -> list[dict[str, object]]:
    """Rows of one SQL query against a gateway's database (SQLite file or PostgreSQL), as dicts."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite")
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sqlalchemy.text(sql), params)
            return [dict(row._mapping) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def expected_cost(record: Any) -> int:
    """What a usage record should cost, recomputed from its token counts and the profile's prices."""
    from app.core.config import REPO_ROOT
    from app.metering.prices import TokenCounts, billed_prices, cost_micros
    from app.profiles.profile import ProfileRegistry

    profile = ProfileRegistry.from_dir(REPO_ROOT / "models" / "profiles").for_model(record["model"])
    counts = TokenCounts(
        prompt=record["prompt_tokens"],
        image=record["image_tokens"],
        cached=record["cached_tokens"],
        reasoning=record["reasoning_tokens"],
        answer=record["answer_tokens"],
    )
    return cost_micros(billed_prices(profile, record["mode"]), counts)


def inked_cells(image: Any) -> list[int]:
    """The cells of a glyph-grid image (app/profiles/thinkgate_arith.py) that hold ink, in reading order."""
    import numpy as np

    from app.profiles.thinkgate_arith import CELL, GRID

    ink = np.asarray(image.convert("L")) < 128
    return [int(k) for k in np.flatnonzero(ink.reshape(GRID, CELL, GRID, CELL).any(axis=(1, 3)))]


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI request (for the scripted engines and proxies of the tests)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
