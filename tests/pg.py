"""A real PostgreSQL server for the test session (pytest plugin, registered in conftest.py).

`postgres_server` runs `initdb` into a fresh directory and starts `postgres` on a free loopback port
(as the `postgres` system user when the tests run as root, since PostgreSQL refuses to run as
root); `postgres_url` gives each test its own new database on it. Needs the `postgresql` package
(`scripts/system-deps.sh` installs it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support import free_port

SYSTEM_USER = "postgres"
DB_USER = "thinkgate"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, not user input
        return self.url(name)


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/system-deps.sh (apt-get install postgresql)")
    return Path(found[-1]).parent


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SYSTEM_USER, "--", *command]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + postgres on 127.0.0.1:<free port>, fsync off (test data), stopped at the end."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="thinkgate-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        account = pwd.getpwnam(SYSTEM_USER)
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
    subprocess.run(
        _as_server_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                DB_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = (root / "postgres.log").open("wb")
    process = subprocess.Popen(
        _as_server_user(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-k",
                str(sockets),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PostgresServer("127.0.0.1", port, DB_USER)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"postgres exited: {(root / 'postgres.log').read_text()[-3000:]}")
            try:
                psycopg.connect(server.url("postgres"), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()  # SIGTERM: smart shutdown once clients are gone; fast after a grace period
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.send_signal(2)  # SIGINT: fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
            if process.poll() is None:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database for one test: `postgresql://thinkgate@127.0.0.1:PORT/t_xxxx`."""
    return postgres_server.create_database()
