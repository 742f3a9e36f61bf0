"""Open WebUI (0.12, default settings) against the gateway and the real engine on the bundled model,
by replaying the request bodies it sends (tests/data/open_webui/, see its README): a chat turn with
its 36 built-in tools, in both modes (the `:long` / `:short` model aliases Open WebUI lists), and its
title, tags and follow-up tasks. Reasoning must arrive as `reasoning_content` (Open WebUI's thinking
panel); tools either reach the engine (the profile's hermes parser) or, on a model whose engine
cannot run them, are dropped with `x-thinkgate-tools: dropped` instead of the engine's refusal."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import REPO_ROOT
from tests.support import GatewayProcess, start_gateway, usage_records

pytestmark = [pytest.mark.engine, pytest.mark.slow]

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "open_webui"


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return body


@pytest.fixture(scope="module")
def toolless(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose profile says the engine cannot run tools (as for DeepSeek-R1)."""
    workdir = tmp_path_factory.mktemp("toolless")
    models = workdir / "models"
    shutil.copytree(REPO_ROOT / "models" / "profiles", models / "profiles")
    profile = models / "profiles" / "thinkgate-arith.toml"
    profile.write_text(profile.read_text().replace('parser = "hermes"', "enabled = false"))
    with start_gateway(workdir, upstreams=[engine.url], env={"THINKGATE_MODELS_DIR": str(models)}) as gateway:
        gateway.api_key = gateway.create_key("open-webui")
        yield gateway


def stream(gateway: GatewayProcess, body: dict[str, Any]) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    """Open WebUI's streamed chat turn: the response headers and the decoded chunks."""
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=300,
    ) as response:
        assert response.status_code == 200, response.read().decode()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return response.headers, [json.loads(line[6:]) for line in lines[:-1]]


def texts(chunks: list[dict[str, Any]]) -> tuple[str, str]:
    reasoning = answer = ""
    for chunk in chunks:
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning += delta.get("reasoning_content") or ""
            answer += delta.get("content") or ""
    return reasoning, answer


@pytest.mark.parametrize("mode", ["long", "short"])
def test_the_chat_turn_with_its_tools_is_answered_without_them(toolless: GatewayProcess, mode: str) -> None:
    body = {**fixture("chat_turn"), "model": f"thinkgate-arith:{mode}"}
    assert len(body["tools"]) == 36
    headers, chunks = stream(toolless, body)
    assert headers["x-thinkgate-tools"] == "dropped"
    assert headers["x-reasoning-mode"] == mode
    reasoning, answer = texts(chunks)
    assert answer.strip()
    assert bool(reasoning) == (mode == "long")  # the thinking panel, in long mode only
    (record,) = usage_records(toolless.database_url, "id = ?", (chunks[0]["id"],))
    assert (record["api"], record["status"], record["mode"]) == ("chat", "completed", mode)


@pytest.mark.parametrize("mode", ["long", "short"])
def test_the_chat_turn_on_an_engine_that_runs_tools(gateway: GatewayProcess, mode: str) -> None:
    """The bundled model runs tools (hermes), but Open WebUI's 36 tool schemas are ~9,900 prompt
    tokens, past its 1024-token context: they are dropped, and the header says why."""
    body = {**fixture("chat_turn"), "model": f"thinkgate-arith:{mode}"}
    headers, chunks = stream(gateway, body)
    assert headers["x-thinkgate-tools"] == "dropped: too long for the context"
    reasoning, answer = texts(chunks)
    calls = [
        c
        for chunk in chunks
        for choice in chunk.get("choices") or ()
        for c in (choice.get("delta") or {}).get("tool_calls") or ()
    ]
    assert answer.strip() or calls
    assert bool(reasoning) == (mode == "long")


@pytest.mark.parametrize("task", ["title", "tags", "follow_ups"])
def test_the_tasks_are_answered(gateway: GatewayProcess, task: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=fixture(f"task_{task}"),
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    # Open WebUI asks for 1000 tokens: more than the 1024-token context leaves; fitted, not refused.
    assert response.headers["x-thinkgate-max-tokens"].startswith("fitted to ")
    fitted = int(response.headers["x-thinkgate-max-tokens"].removeprefix("fitted to "))
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["content"] or message.get("reasoning_content")
    assert body["usage"]["prompt_tokens"] + fitted <= 1024
    (record,) = usage_records(gateway.database_url, "id = ?", (body["id"],))
    assert record["api"] == "chat"
    print(f"{task}: mode {body['reasoning_mode']} ({body['reasoning_mode_reason']}), fitted to {fitted}")
