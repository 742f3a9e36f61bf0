"""Billing against hostile clients and a misbehaving engine: the ledger books what the engine did.

These run a real gateway in front of the scripted engine (tests/scripted_engine.py): a real model
cannot be made to count a prompt far past its text, ignore `max_tokens`, or reason in short mode on
demand. What the real engine shows (n > 1 counts, tools in the prompt) is in test_billing_engine.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from app.core.config import REPO_ROOT
from app.metering.prices import format_usd
from app.profiles.profile import ProfileRegistry
from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture
from tests.support import GatewayProcess, expected_cost, start_gateway, usage_records

pytestmark = pytest.mark.slow

PROFILE = ProfileRegistry.from_dir(REPO_ROOT / "models" / "profiles").by_name(MODEL)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Looks something up. " * 30,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    for i in range(100)
]


engine = engine_fixture()


@pytest.fixture(autouse=True)
def fresh_script(engine: ScriptedEngine) -> None:
    engine.script = Script()


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with start_gateway(tmp_path_factory.mktemp("billing"), upstreams=[engine.url]) as gateway:
        yield gateway


def chat(gateway: GatewayProcess, key: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=60,
    )


def balance(gateway: GatewayProcess, key: str) -> dict[str, object]:
    response = httpx.get(f"{gateway.base_url}/v1/balance", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def record_of(gateway: GatewayProcess, response: httpx.Response) -> dict[str, object]:
    rows = usage_records(gateway.database_url, "id = ?", (response.headers["x-request-id"],))
    assert len(rows) == 1
    return dict(rows[0])


def test_a_prompt_past_the_reservation_is_billed_in_full(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    """100 tools (70 KB) and "hi". The reservation's bound now covers the tools (about 110,000 tokens
    at most), and an engine that counts even more than that (300,000) is still billed in full: the
    ledger, the response's usage.cost and X-Usage-Cost all say the same, and the overrun takes the
    key below zero."""
    engine.script.prompt_tokens = 300_000
    key = gateway.create_key("overrun", "--budget", "0.03")
    response = chat(gateway, key, {"tools": TOOLS, "tool_choice": "none", "max_tokens": 8})
    assert response.status_code == 200, response.text
    record = record_of(gateway, response)
    assert record["prompt_tokens"] == 300_000 and record["status"] == "completed"
    assert record["cost_micros"] == expected_cost(record) > record["reserved_micros"]  # type: ignore[operator]
    assert response.headers["x-usage-cost"] == format_usd(int(record["cost_micros"]))  # type: ignore[arg-type]
    assert response.json()["usage"]["cost"] == int(record["cost_micros"]) / 1_000_000  # type: ignore[call-overload]
    after = balance(gateway, key)
    assert after["spent_micros"] == record["cost_micros"] and after["reserved_micros"] == 0
    assert after["available_micros"] == 30_000 - int(record["cost_micros"]) < 0  # type: ignore[call-overload]
    assert "more than reserved: billed in full" in gateway.log()


def test_tokens_past_max_tokens_are_billed(gateway: GatewayProcess, engine: ScriptedEngine) -> None:
    engine.script.obey_max_tokens = False
    engine.script.reasoning_tokens, engine.script.answer_tokens = 30, 30
    key = gateway.create_key("runaway", "--budget", "1")
    body = {
        "reasoning_mode": "long",
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = chat(gateway, key, body)
    assert response.status_code == 200
    record = record_of(gateway, response)
    assert (record["completion_tokens"], record["reasoning_tokens"]) == (60, 30)
    assert record["cost_micros"] == expected_cost(record)
    assert '"completion_tokens":60' in response.text


def test_reasoning_in_a_short_mode_request_is_billed_at_long_prices(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    """A short-mode request that made the model reason anyway pays long-CoT's reasoning price."""
    engine.script.reasoning_in_short_mode = True
    engine.script.reasoning_tokens, engine.script.answer_tokens = 40, 2
    key = gateway.create_key("short-only", "--budget", "1", "--modes", "short")
    response = chat(gateway, key, {"reasoning_mode": "short", "max_tokens": 100})
    assert response.status_code == 200, response.text
    record = record_of(gateway, response)
    assert record["mode"] == "short" and record["reasoning_tokens"] == 40
    short, long = PROFILE.prices["short"], PROFILE.prices["long"]
    assert long.reasoning_output > short.reasoning_output
    prompt_micros = 12 * short.input
    billed = -(-(prompt_micros + 40 * long.reasoning_output + 2 * short.answer_output) // 1_000_000)
    assert record["cost_micros"] == billed == expected_cost(record)


def test_prompt_building_fields_never_reach_the_engine(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    """The short-mode bypass of the first generation, sent by a short-only key: the engine is told
    nothing but the profile's switch (enable_thinking false) and the sampling settings."""
    key = gateway.create_key("bypass", "--budget", "1", "--modes", "short")
    response = chat(
        gateway,
        key,
        {
            "reasoning_mode": "short",
            "add_generation_prompt": False,
            "continue_final_message": True,
            "chat_template_kwargs": {"enable_thinking": False, "custom": True},
            "messages": [
                {"role": "user", "content": "What is 4 + 4?"},
                {"role": "assistant", "content": "<think>\n", "prefix": True},
            ],
            "temperature": 0.5,
        },
    )
    assert response.status_code == 200, response.text
    sent = engine.requests[-1]
    assert "add_generation_prompt" not in sent and "continue_final_message" not in sent
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert sent["temperature"] == 0.5


def test_unknown_models_make_no_label_and_no_row(gateway: GatewayProcess) -> None:
    key = gateway.create_key("names", "--budget", "1")
    before = httpx.get(f"{gateway.base_url}/metrics").text
    for i in range(3):
        name = f"{i}" + "m" * 100_000
        response = chat(gateway, key, {"model": name})
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert len(response.content) < 1000
    for name in ("x" * 300, "bad\u0000name", f"{MODEL}\u0000:short"):
        assert chat(gateway, key, {"model": name}).status_code == 404
    after = httpx.get(f"{gateway.base_url}/metrics").text
    assert len(after) < len(before) + 4096 and "mmmmmmmmmm" not in after
    models = {row["model"] for row in usage_records(gateway.database_url)}
    assert models <= {MODEL}


def test_images_are_decoded_only_after_admission(gateway: GatewayProcess) -> None:
    """Cheap checks first: a key with no budget is refused before its images cost any CPU, and a
    rate-limited one before they are looked at (a broken image would otherwise be the 400)."""
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 4096).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": broken}}]}],
            "max_tokens": 8}  # fmt: skip
    broke = gateway.create_key("broke", "--budget", "0")
    refused = chat(gateway, broke, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"

    limited = gateway.create_key("limited", "--budget", "1", "--rpm", "1")
    assert chat(gateway, limited, {"max_tokens": 8}).status_code == 200
    refused = chat(gateway, limited, body)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"

    paying = gateway.create_key("paying", "--budget", "1")
    bad = chat(gateway, paying, body)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].content[0].image_url.url"
    rows = usage_records(gateway.database_url, "key_id = (SELECT id FROM api_keys WHERE name = 'paying')")
    assert [(r["status"], r["cost_micros"]) for r in rows] == [("rejected", 0)]
    assert balance(gateway, paying)["reserved_micros"] == 0


def test_token_counts_count_against_the_rate_limit(gateway: GatewayProcess, engine: ScriptedEngine) -> None:
    key = gateway.create_key("counter", "--rpm", "5")
    url = f"{gateway.base_url}/v1/tokenizers/estimate-token-count"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    before = len(engine.requests)
    statuses = [
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(8)
    ]
    assert statuses == [200] * 5 + [429] * 3
    assert len(engine.requests) - before == 5


def test_an_idempotency_key_is_bound_to_its_request(gateway: GatewayProcess) -> None:
    key = gateway.create_key("retrier", "--budget", "1")
    first = chat(gateway, key, {"max_tokens": 8}, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 200
    again = chat(gateway, key, {"max_tokens": 8}, **{"Idempotency-Key": "order-1"})
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    streamed = chat(gateway, key, {"max_tokens": 8, "stream": True}, **{"Idempotency-Key": "order-1"})
    assert streamed.headers.get("idempotent-replayed") == "true" and "data: [DONE]" in streamed.text
    other = chat(gateway, key, {"max_tokens": 9}, **{"Idempotency-Key": "order-1"})
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    completed = usage_records(
        gateway.database_url, "status = 'completed' AND key_id = (SELECT id FROM api_keys WHERE name = ?)",
        ("retrier",),
    )  # fmt: skip
    assert len(completed) == 1


def test_n_choices_are_counted_per_choice_when_the_client_leaves(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    """vLLM's continuous usage counts each chunk's own choice; only the final chunk sums. A client
    that hangs up before it must still pay for every choice's tokens."""
    engine.script.reasoning_tokens, engine.script.answer_tokens = 0, 40
    engine.script.token_delay_s = 0.01
    key = gateway.create_key("many", "--budget", "1")
    body = {"model": MODEL, "n": 4, "max_tokens": 40, "stream": True, "temperature": 1.0,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    seen = 0
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {key}"}, timeout=60,
    ) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"content":"x"' in line:
                seen += 1
            if seen >= 100:
                break
    record = _settled(gateway, request_id)
    assert record["status"] == "aborted"
    assert record["completion_tokens"] >= 100, record
    assert record["cost_micros"] == expected_cost(record)


def _settled(gateway: GatewayProcess, request_id: str) -> dict[str, object]:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = usage_records(gateway.database_url, "id = ? AND status != 'open'", (request_id,))
        if rows:
            return dict(rows[0])
        time.sleep(0.1)
    raise AssertionError(f"{request_id} was never settled")
