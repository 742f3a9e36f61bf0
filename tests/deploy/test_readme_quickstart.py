"""The README's quickstart, run as written against a real gateway and engine.

The blocks marked `<!-- quickstart -->` run in order in one shell environment; the only change is
the address: `localhost:8000` becomes the test gateway's port, and the default database is the test
gateway's (through THINKGATE_DATABASE_URL, which the README's `keys create` reads like any setting).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import GatewayProcess

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- quickstart -->\n```(bash|python)\n(.*?)```", re.S)


def quickstart_blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in BLOCK.findall((ROOT / "README.md").read_text())]


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make serve", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_quickstart_runs_as_written(gateway: GatewayProcess) -> None:
    blocks = quickstart_blocks()
    # The Chat Completions quickstart first; the other doors' sections after it (checked below).
    assert [lang for lang, _ in blocks][:5] == ["bash", "bash", "bash", "python", "python"]
    port = gateway.base_url.rsplit(":", 1)[1]
    env = {
        **os.environ,
        "THINKGATE_DATABASE_URL": gateway.database_url,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    outputs = []
    for lang, code in blocks:
        code = code.replace("localhost:8000", f"127.0.0.1:{port}")
        if lang == "bash":
            # One shell per block, with what earlier blocks exported carried over.
            script = f"set -euo pipefail\n{code}\necho __ENV__ THINKGATE_API_KEY=${{THINKGATE_API_KEY:-}}"
            result = subprocess.run(
                ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
            )
        else:
            result = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
            )
        assert result.returncode == 0, f"{lang} block failed:\n{code}\n{result.stderr}"
        stdout = result.stdout
        if "__ENV__ THINKGATE_API_KEY=" in stdout:
            stdout, _, key = stdout.rpartition("__ENV__ THINKGATE_API_KEY=")
            if key.strip():
                env["THINKGATE_API_KEY"] = key.strip()
        outputs.append(stdout)
    assert env.get("THINKGATE_API_KEY", "").startswith("tg-")
    long_answer = json.loads(outputs[1])
    assert long_answer["reasoning_mode"] == "long"
    assert long_answer["choices"][0]["message"].get("reasoning_content")
    stream = outputs[2]
    assert stream.strip().endswith("data: [DONE]") and '"reasoning_mode":"short"' in stream
    assert "reasoning tokens:" in outputs[3] and "cost: $" in outputs[3]
    assert outputs[4].strip() == "The answer is 23115."  # 345 x 67, read from the image
    messages = [out for (lang, code), out in zip(blocks, outputs, strict=True) if "/v1/messages" in code]
    assert len(messages) == 1, "the Messages API's curl block"
    message = json.loads(messages[0])
    assert message["type"] == "message"
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]
    sdk = [out for (lang, code), out in zip(blocks, outputs, strict=True) if "import anthropic" in code]
    assert len(sdk) == 1 and "thinking: '" in sdk[0] and "cost: $" in sdk[0], sdk
