"""Thinking budgets on engines that cannot enforce them: the gateway stops the reasoning at the
budget, closes it, and lets the engine continue with the answer (prefix-cached continuation)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support import Engine, start_gateway

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_forces_the_end_of_thinking(engine: Engine, tmp_path: Path, stream: bool) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "profiles", models / "profiles")
    profile = models / "profiles" / "thinkgate-arith.toml"
    profile.write_text(profile.read_text().replace("engine_budget = true", "engine_budget = false"))
    assert "engine_budget = false" in profile.read_text()
    with start_gateway(tmp_path, upstreams=[engine.url], args=("--models-dir", str(models))) as gateway:
        key = gateway.create_key("budget")
        body = {
            "model": "thinkgate-arith", "max_tokens": 300, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None,
            "thinking": {"type": "enabled", "budget_tokens": 15},
            "messages": [{"role": "user", "content": "What is 987654 + 123456?"}],
        }  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers, timeout=300
        )
        assert response.status_code == 200, response.text
        if stream:
            events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
            chunks = [httpx.Response(200, content=event).json() for event in events]
            usage = chunks[-1]["usage"]
            reasoning = "".join(
                c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"]
            )
            content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        else:
            data = response.json()
            usage = data["usage"]
            reasoning = data["choices"][0]["message"]["reasoning_content"]
            content = data["choices"][0]["message"]["content"]
    reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 15 <= reasoning_tokens <= 16, usage
    assert reasoning and "</think>" not in reasoning
    assert content, "the answer must still arrive after the forced end of thinking"
    assert (
        usage["completion_tokens"] == reasoning_tokens + usage["completion_tokens_details"]["answer_tokens"]
    )
    assert usage["completion_tokens"] <= 300
