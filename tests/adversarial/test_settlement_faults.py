"""A disk that fills up mid-stream: the settlement is retried until it lands, and one still refused
when the gateway stops is spooled and settled by the next start, never closed as `interrupted` at 0.

The database lives on a 4 MiB tmpfs that the test fills with a file while the request streams (the
scripted engine paces the tokens: a real model's stream is too short to fill a disk during it).
Mounting needs root, as the CI and the development machines run; elsewhere the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.scripted_engine import MODEL, ScriptedEngine
from tests.support import GatewayProcess, expected_cost, start_gateway, usage_records

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; the file returned gives them back when deleted."""
    filler = disk / "filler"
    for size in (65536, 512, 1):
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while True:
                out.write(b"\0" * size)
    return filler


def stream_while_filling(gateway: GatewayProcess, key: str, disk: Path) -> tuple[str, int]:
    """Stream a long answer; fill the disk once the first token is in. The request id and the
    completion tokens the client was told."""
    body = {"model": MODEL, "reasoning_mode": "long", "stream": True, "max_tokens": 100,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is 1 + 2?"}]}  # fmt: skip
    filled = threading.Event()
    usage_line = ""
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {key}"}, timeout=120,
    ) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if not filled.is_set() and '"x"' in line:
                fill(disk)
                filled.set()
            if '"usage"' in line and '"choices":[]' in line:
                usage_line = line
    assert filled.is_set() and usage_line, "the stream ended without its usage"
    completion = httpx.Response(200, content=usage_line.removeprefix("data: ")).json()["usage"][
        "completion_tokens"
    ]
    return request_id, int(completion)


def record(gateway: GatewayProcess, request_id: str) -> dict[str, object]:
    rows = usage_records(gateway.database_url, "id = ?", (request_id,))
    assert len(rows) == 1
    return dict(rows[0])


def wait_status(gateway: GatewayProcess, request_id: str, timeout_s: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = record(gateway, request_id)
        if found["status"] != "open":
            return found
        time.sleep(0.25)
    raise AssertionError(f"{request_id} is still open after {timeout_s} s")


def test_a_full_disk_delays_the_bill_but_never_loses_it(small_disk: Path, tmp_path: Path) -> None:
    engine = ScriptedEngine().start()
    engine.script.reasoning_tokens, engine.script.answer_tokens = 40, 40
    engine.script.token_delay_s = 0.03
    database_url = f"sqlite:///{small_disk / 'thinkgate.db'}"
    env = {"THINKGATE_LEDGER_SPOOL": str(tmp_path / "spool.jsonl")}
    workdir = tmp_path / "gateway"
    try:
        with start_gateway(workdir, upstreams=[engine.url], database_url=database_url, env=env) as gateway:
            key = gateway.create_key("writer", "--budget", "1")
            # 1. The disk fills mid-stream and frees up later: housekeeping settles it in full.
            request_id, told = stream_while_filling(gateway, key, small_disk)
            assert told == 80
            assert record(gateway, request_id)["status"] == "open"  # refused by the full disk
            (small_disk / "filler").unlink()
            settled = wait_status(gateway, request_id)
            assert settled["status"] == "completed" and settled["completion_tokens"] == 80
            assert settled["cost_micros"] == expected_cost(settled) > 0
            assert "settling" in gateway.log() and "failed" in gateway.log()

            # 2. The disk fills again and the gateway is stopped before it frees up: spooled.
            request_id, told = stream_while_filling(gateway, key, small_disk)
        assert record(gateway, request_id)["status"] == "open"
        assert (tmp_path / "spool.jsonl").exists()
        (small_disk / "filler").unlink()
        with start_gateway(workdir, upstreams=[engine.url], database_url=database_url, env=env) as restarted:
            settled = record(restarted, request_id)
            assert settled["status"] == "completed", settled
            assert settled["completion_tokens"] == told == 80
            assert settled["cost_micros"] == expected_cost(settled) > 0
            spent = httpx.get(
                f"{restarted.base_url}/v1/balance", headers={"Authorization": f"Bearer {key}"}
            ).json()
            assert spent["reserved_micros"] == 0
            assert not (tmp_path / "spool.jsonl").exists()
    finally:
        engine.stop()
