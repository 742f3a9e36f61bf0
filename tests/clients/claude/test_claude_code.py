"""Claude Code (`claude -p`, npm `@anthropic-ai/claude-code`, installed by scripts/client-deps.sh from
this folder's package-lock.json) completes a task that needs one tool call, through Thinkgate's
Messages API door.

The engine is the scripted one (tests/scripted_engine.py): the bundled model calls no tools, and the
task needs a model that calls Claude Code's own Bash tool on demand. Claude Code is kept on loopback:
every telemetry, update and non-essential traffic switch off, a temporary HOME, and a dead proxy for
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
CLAUDE = HERE / "node_modules" / ".bin" / "claude"
PROOF = "written-through-thinkgate"


@pytest.fixture(scope="module")
def claude() -> Path:
    if not CLAUDE.exists():
        if shutil.which("npm") is None and not os.environ.get("CI"):
            pytest.skip("npm is not installed (Claude Code comes from npm)")
        raise AssertionError(f"{CLAUDE} is missing: run `bash scripts/client-deps.sh` (make test does)")
    return CLAUDE


engine = engine_fixture()
gateway = gateway_fixture()


def claude_env(gateway: GatewayProcess, home: Path) -> dict[str, str]:
    keep = {name: os.environ[name] for name in ("PATH", "LANG", "TERM") if name in os.environ}
    return {
        **keep,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "ANTHROPIC_BASE_URL": gateway.base_url,
        "ANTHROPIC_API_KEY": gateway.api_key,
        "ANTHROPIC_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": MODEL,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": MODEL,
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL,
        "CLAUDE_CODE_SUBAGENT_MODEL": MODEL,
        # Nothing but the gateway: no telemetry, error reports, updates, surveys or feature flags,
        # and anything that still tries the network meets a proxy that is not there.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_BUG_COMMAND": "1",
        "DISABLE_NON_ESSENTIAL_MODEL_CALLS": "1",
        "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        "CLAUDE_CODE_DISABLE_FEATURE_FLAGS": "1",
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def test_claude_code_runs_a_tool_through_thinkgate(
    claude: Path, engine: ScriptedEngine, gateway: GatewayProcess, tmp_path: Path
) -> None:
    engine.script = Script(
        reasoning_text="I will write the file with the shell",
        tool_call=("Bash", {"command": f"echo {PROOF} > proof.txt", "description": "Write proof.txt"}),
        answer_text="Done: proof.txt is written.",
    )
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [str(claude), "-p", "Write the word into proof.txt with the shell.", "--allowedTools", "Bash",
         "--output-format", "text", "--model", MODEL],
        cwd=work, env=claude_env(gateway, tmp_path / "home"), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    where = f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
    assert done.returncode == 0, where
    assert (work / "proof.txt").read_text().strip() == PROOF, where
    assert "Done: proof.txt is written." in done.stdout, where
    # The tool's result went back to the model as the tool message of the call.
    answered = [r for r in engine.requests if r.get("messages") and r["messages"][-1]["role"] == "tool"]
    assert answered and answered[-1]["messages"][-1]["tool_call_id"] == "call_scripted1", where
    rows = usage_records(gateway.database_url, "api = 'messages'")
    assert len(rows) >= 2 and all(row["cost_micros"] == expected_cost(row) for row in rows)
