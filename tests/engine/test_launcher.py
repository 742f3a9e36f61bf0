"""The embedded-engine supervisor: readiness, restart with back-off, shutdown of the process group.

vLLM itself is exercised by the session's embedded engine (conftest); here a stand-in process that
speaks `/v1/models` lets the test kill and restart "the engine" in seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from app.engine.checkpoint import CheckpointError
from app.engine.launcher import EmbeddedEngine, free_port
from app.profiles.profile import ProfileRegistry

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ProfileRegistry.from_dir(ROOT / "models" / "profiles").by_name("thinkgate-arith")
STAND_IN = """
import http.server, json, os, sys, subprocess
# A child in the same process group, like vLLM's engine-core worker: shutdown must reach it too.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[2], "a").write(f"{os.getpid()} {child.pid}\\n")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "thinkgate-arith"}]}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stand_in_engine(tmp_path: Path) -> tuple[EmbeddedEngine, Path]:
    script = tmp_path / "engine.py"
    script.write_text(STAND_IN)
    pids = tmp_path / "pids"
    port = free_port()
    engine = EmbeddedEngine(
        PROFILE, ROOT / "models" / "thinkgate-arith", port=port, log_path=tmp_path / "engine.log",
        command=[sys.executable, str(script), str(port), str(pids)],
    )  # fmt: skip
    return engine, pids


async def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


@pytest.mark.slow
async def test_supervisor_restarts_a_dead_engine_and_stops_the_group(tmp_path: Path) -> None:
    engine, pids = stand_in_engine(tmp_path)
    async with httpx.AsyncClient() as client:
        engine.start(client)
        await wait_for(lambda: pids.exists() and len(pids.read_text().split("\n")) >= 2)
        first_leader, first_child = map(int, pids.read_text().split()[:2])
        os.kill(first_leader, signal.SIGKILL)  # the engine dies unexpectedly
        await wait_for(lambda: engine.restarts == 1 and len(pids.read_text().split()) == 4)
        leader, child = map(int, pids.read_text().split()[2:4])
        await wait_for(lambda: httpx.get(f"{engine.url}/v1/models").status_code == 200)
        await engine.stop()
        await wait_for(lambda: not alive(leader) and not alive(child), timeout_s=5)  # the whole group is gone
    assert "starting:" in (tmp_path / "engine.log").read_text()
    if alive(first_child):  # the first life's worker, orphaned when the test SIGKILLed its leader
        os.kill(first_child, signal.SIGKILL)


async def test_a_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for item in (ROOT / "models" / "thinkgate-arith").iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    engine = EmbeddedEngine(PROFILE, copy, log_path=tmp_path / "engine.log")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        engine.spawn()
    assert engine.process is None
