"""Codex CLI (`codex exec`, npm `@openai/codex`, installed by scripts/client-deps.sh from this
folder's package-lock.json) completes a task that needs one tool call, through Thinkgate's Responses
API door, configured as a custom model provider (`wire_api = "responses"`).

The engine is the scripted one (tests/scripted_engine.py): the bundled model calls no tools, and the
task needs a model that calls Codex's own `exec_command` tool on demand. Codex is kept on loopback:
a temporary CODEX_HOME and HOME, analytics, update checks and feedback off, and a dead proxy for
anything that is not 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture, gateway_fixture
from tests.support import GatewayProcess, expected_cost, usage_records

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
CODEX = HERE / "node_modules" / ".bin" / "codex"
SECRET = "plum-4471"  # only in the file: the answer can hold it only if the tool ran


@pytest.fixture(scope="module")
def codex() -> Path:
    if not CODEX.exists():
        if shutil.which("npm") is None and not os.environ.get("CI"):
            pytest.skip("npm is not installed (Codex CLI comes from npm)")
        raise AssertionError(f"{CODEX} is missing: run `bash scripts/client-deps.sh` (make test does)")
    return CODEX


engine = engine_fixture()
gateway = gateway_fixture()


def codex_command(codex: Path, gateway: GatewayProcess, workdir: Path, last: Path, prompt: str) -> list[str]:
    config = {
        "model_provider": '"thinkgate"',
        "model_providers.thinkgate.name": '"Thinkgate"',
        "model_providers.thinkgate.base_url": f'"{gateway.base_url}/v1"',
        "model_providers.thinkgate.wire_api": '"responses"',
        "model_providers.thinkgate.env_key": '"THINKGATE_API_KEY"',
        "model_providers.thinkgate.request_max_retries": "0",
        "model_providers.thinkgate.stream_max_retries": "0",
        "analytics.enabled": "false",
        "feedback.enabled": "false",
        "check_for_update_on_startup": "false",
    }
    options = [item for key, value in config.items() for item in ("-c", f"{key}={value}")]
    return [str(codex), "exec", *options, "-m", MODEL, "--skip-git-repo-check", "--sandbox", "read-only",
            "-C", str(workdir), "--output-last-message", str(last), prompt]  # fmt: skip


def codex_env(gateway: GatewayProcess, home: Path) -> dict[str, str]:
    keep = {name: os.environ[name] for name in ("PATH", "LANG", "TERM") if name in os.environ}
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port: any non-loopback call fails
    return {
        **keep,
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "THINKGATE_API_KEY": gateway.api_key,
        "NO_COLOR": "1",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "ALL_PROXY": dead,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def test_codex_exec_runs_a_tool_through_thinkgate(
    codex: Path, gateway: GatewayProcess, engine: ScriptedEngine, tmp_path: Path
) -> None:
    engine.script = Script(
        reasoning_text="I will read the file",
        tool_call=("exec_command", {"cmd": "cat secret.txt"}),
        answer_text="The file says: {result}",
    )
    engine.requests.clear()
    home, workdir, last = tmp_path / "home", tmp_path / "project", tmp_path / "last.txt"
    (home / ".codex").mkdir(parents=True)
    workdir.mkdir()
    (workdir / "secret.txt").write_text(SECRET + "\n")
    result = subprocess.run(
        codex_command(codex, gateway, workdir, last, "What is in secret.txt?"),
        env=codex_env(gateway, home), capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET in last.read_text()  # the command ran, its output went back, the answer came out
    # Two turns through the door: the tool call, then the answer with the tool's output.
    chats = [body for body in engine.requests if "stream" in body]  # not the token counts
    assert len(chats) == 2
    first, second = chats
    assert "exec_command" in {tool["function"]["name"] for tool in first["tools"]}
    call = second["messages"][-2]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "exec_command"
    assert second["messages"][-1]["role"] == "tool" and SECRET in second["messages"][-1]["content"]
    rows = usage_records(gateway.database_url, "api = 'responses'")
    assert len(rows) == 2 and {row["status"] for row in rows} == {"completed"}
    assert all(row["cost_micros"] == expected_cost(row) for row in rows)
