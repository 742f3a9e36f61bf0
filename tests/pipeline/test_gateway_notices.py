"""What the pipeline tells a door to say in response headers, through a real gateway in front of the
scripted engine (it reports a context of 1024 tokens and counts every prompt as `tokenize_count`):
an output bound larger than the context is fitted, not refused, and the reservation uses the fitted
bound; on a model whose engine cannot run tools, offered tools are dropped and the header says so."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.core.config import REPO_ROOT
from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture, gateway_fixture
from tests.support import GatewayProcess, start_gateway, usage_records

pytestmark = pytest.mark.slow

TOOLS = [
    {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
    for i in range(36)
]


engine = engine_fixture()


@pytest.fixture(autouse=True)
def fresh_script(engine: ScriptedEngine) -> None:
    engine.script = Script()
    engine.requests.clear()


gateway = gateway_fixture()


@pytest.fixture(scope="module")
def toolless(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose profile for the model says its engine cannot run tools."""
    workdir = tmp_path_factory.mktemp("toolless")
    models = workdir / "models"
    shutil.copytree(REPO_ROOT / "models" / "profiles", models / "profiles")
    profile = models / "profiles" / "thinkgate-arith.toml"
    profile.write_text(profile.read_text().replace('parser = "hermes"', "enabled = false"))
    env = {"THINKGATE_MODELS_DIR": str(models)}
    with start_gateway(workdir, upstreams=[engine.url], env=env) as gateway:
        gateway.api_key = gateway.create_key("toolless")
        yield gateway


def chat(gateway: GatewayProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "reasoning_mode": "short",
            **body,
        },
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=30,
    )


def reserved(gateway: GatewayProcess, request_id: str) -> int:
    (record,) = usage_records(gateway.database_url, "id = ?", (request_id,))
    assert record["api"] == "chat"
    return int(record["reserved_micros"])


def test_an_output_bound_past_the_context_is_fitted_and_reserved_as_fitted(
    engine: ScriptedEngine, gateway: GatewayProcess
) -> None:
    engine.script = Script(tokenize_count=24)
    fitted = 1024 - 24
    big = chat(gateway, {"max_tokens": 64000})
    assert big.status_code == 200, big.text
    assert big.headers["x-thinkgate-max-tokens"] == f"fitted to {fitted}"
    sent = [r for r in engine.requests if "max_tokens" in r]
    assert [r["max_tokens"] for r in sent] == [fitted]
    assert any("messages" in r and "max_tokens" not in r for r in engine.requests)  # the /tokenize
    # The same request asking for exactly the fitted bound reserves the same: the reservation is of
    # the fitted bound, not of 64000.
    same = chat(gateway, {"max_tokens": fitted})
    assert "x-thinkgate-max-tokens" not in same.headers
    assert reserved(gateway, big.json()["id"]) == reserved(gateway, same.json()["id"])
    # A bound that fits is not counted by the engine at all.
    engine.requests.clear()
    small = chat(gateway, {"max_tokens": 100})
    assert "x-thinkgate-max-tokens" not in small.headers
    assert [r.get("max_tokens") for r in engine.requests] == [100]
    # Streamed: the header is there too.
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5000,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=30,
    ) as streamed:
        assert streamed.headers["x-thinkgate-max-tokens"] == f"fitted to {fitted}"
        assert b"[DONE]" in streamed.read()


def test_a_prompt_that_fills_the_context_is_a_400(engine: ScriptedEngine, gateway: GatewayProcess) -> None:
    engine.script = Script(tokenize_count=1024)
    refused = chat(gateway, {"max_tokens": 64000})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"


def test_offered_tools_are_passed_to_an_engine_that_runs_them(
    engine: ScriptedEngine, gateway: GatewayProcess
) -> None:
    answered = chat(gateway, {"tools": TOOLS, "tool_choice": "auto"})
    assert answered.status_code == 200 and "x-thinkgate-tools" not in answered.headers
    assert engine.requests[-1]["tools"] == TOOLS


def test_tools_too_long_for_the_context_are_dropped_unless_a_call_is_required(
    engine: ScriptedEngine, gateway: GatewayProcess
) -> None:
    engine.script = Script(tokenize_count=20, tokenize_per_tool=25)  # 36 tools: 920 of 1024 tokens
    answered = chat(gateway, {"tools": TOOLS, "max_tokens": 500})
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-thinkgate-tools"] == "dropped: too long for the context"
    assert "tools" not in engine.requests[-1] and engine.requests[-1]["max_tokens"] == 500
    # Counted once, with the tools; without them the prompt bound says the 500 tokens fit.
    assert [len(r.get("tools") or ()) for r in engine.requests if "max_tokens" not in r] == [36]
    # A client that insists on a call keeps its tools, and the answer gets what room is left.
    engine.requests.clear()
    kept = chat(gateway, {"tools": TOOLS, "tool_choice": "required", "max_tokens": 500})
    assert kept.status_code == 200 and "x-thinkgate-tools" not in kept.headers
    assert kept.headers["x-thinkgate-max-tokens"] == "fitted to 104"
    # A few tools that leave room to answer stay.
    few = chat(gateway, {"tools": TOOLS[:4], "max_tokens": 500})
    assert "x-thinkgate-tools" not in few.headers and len(engine.requests[-1]["tools"]) == 4


def test_offered_tools_are_dropped_when_the_engine_cannot_run_them(
    engine: ScriptedEngine, toolless: GatewayProcess
) -> None:
    answered = chat(toolless, {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False})
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-thinkgate-tools"] == "dropped"
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(engine.requests[-1])
    for choice in ("required", {"type": "function", "function": {"name": "tool_3"}}):
        refused = chat(toolless, {"tools": TOOLS, "tool_choice": choice})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"
    (record,) = usage_records(toolless.database_url, "status = 'rejected'")[:1]
    assert record["api"] == "chat"


def test_usage_records_and_totals_show_the_api(gateway: GatewayProcess) -> None:
    assert chat(gateway, {}).status_code == 200
    auth = {"Authorization": f"Bearer {gateway.api_key}"}
    page = httpx.get(f"{gateway.base_url}/v1/usage/records", headers=auth, timeout=10).json()
    assert page["data"] and {record["api"] for record in page["data"]} == {"chat"}
    csv = httpx.get(f"{gateway.base_url}/v1/usage/records?format=csv", headers=auth, timeout=10).text
    header = csv.splitlines()[0].split(",")
    assert header[header.index("model") + 1] == "api"
    totals = httpx.get(f"{gateway.base_url}/v1/usage?group_by=api", headers=auth, timeout=10).json()
    assert [group["api"] for group in totals["data"]] == ["chat"]
