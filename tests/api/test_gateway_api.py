"""The gateway end to end with the official `openai` SDK, against the real vLLM engine."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

from tests.support import GatewayProcess

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"
PROBLEM = "What is 4821 + 3377?"


@pytest.fixture()
def sdk(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key, max_retries=0, timeout=300
    )


def problem_png(text: str = "123 + 456") -> str:
    image = Image.new("RGB", (200, 80), "white")
    ImageDraw.Draw(image).text((10, 30), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def extra(response: Any, name: str) -> Any:
    return (response.model_extra or {}).get(name)


def test_models_lists_mode_aliases(sdk: openai.OpenAI) -> None:
    ids = {model.id for model in sdk.models.list()}
    assert {MODEL, f"{MODEL}:long", f"{MODEL}:short"} <= ids


def test_long_mode_returns_reasoning_then_answer(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": PROBLEM}], max_completion_tokens=400,
        extra_body={"reasoning_mode": "long", "reasoning": {"max_tokens": 300}},
    )  # fmt: skip
    response = raw.parse()
    message = response.choices[0].message
    reasoning = extra(message, "reasoning_content")
    assert reasoning and extra(message, "reasoning") == reasoning
    assert "<think>" not in (message.content or "") and "</think>" not in (message.content or "")
    # The newlines after </think> separate reasoning from answer; they are not the answer's.
    assert message.content and message.content == message.content.lstrip()
    usage = response.usage
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning_tokens = usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning_tokens <= usage.completion_tokens
    assert extra(response, "reasoning_mode") == "long"
    assert raw.headers["x-reasoning-mode"] == "long"
    cost = extra(usage, "cost")
    assert isinstance(cost, float) and cost > 0
    assert float(raw.headers["x-usage-cost"]) == pytest.approx(cost)


def test_short_mode_answers_without_reasoning(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=f"{MODEL}:short", messages=[{"role": "user", "content": PROBLEM}], max_tokens=60
    )
    message = response.choices[0].message
    assert not extra(message, "reasoning_content")
    assert message.content
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    assert response.usage.completion_tokens_details.reasoning_tokens == 0
    assert extra(response, "reasoning_mode") == "short"
    assert extra(response, "reasoning_mode_reason") == "explicit: model"


def test_streaming_splits_reasoning_and_reports_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROBLEM}], stream=True, max_tokens=400,
        stream_options={"include_usage": True}, reasoning_effort="low",
    )  # fmt: skip
    reasoning, content, order, usage, modes = [], [], [], None, set()
    for chunk in stream:
        modes.add(extra(chunk, "reasoning_mode"))
        if chunk.usage:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            delta = choice.delta
            if extra(delta, "reasoning_content"):
                reasoning.append(extra(delta, "reasoning_content"))
                order.append("r")
            if delta.content:
                content.append(delta.content)
                order.append("c")
    assert modes == {"long"}
    assert reasoning and content
    assert not "".join(content).startswith("\n")
    assert "c" not in order[: order.index("c")] and "r" not in order[order.index("c") :]
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens is not None
    assert 0 < usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens
    assert extra(usage, "cost") > 0


def test_thinking_budget_caps_reasoning_and_still_answers(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 987654 - 123789?"}], max_tokens=200,
        extra_body={"thinking": {"type": "enabled", "budget_tokens": 12}},
    )  # fmt: skip
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    reasoning_tokens = response.usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning_tokens <= 13  # the budget, plus the forced end-of-thinking token
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length")


def test_hidden_reasoning_is_still_counted(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROBLEM}], max_tokens=300,
        extra_body={"reasoning": {"effort": "low", "exclude": True}},
    )  # fmt: skip
    assert not extra(response.choices[0].message, "reasoning_content")
    assert response.usage is not None and response.usage.completion_tokens_details is not None
    assert (response.usage.completion_tokens_details.reasoning_tokens or 0) > 0


def test_image_input_reaches_the_model(sdk: openai.OpenAI) -> None:
    text_only = sdk.chat.completions.create(
        model=f"{MODEL}:short", max_tokens=5,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Solve the problem in the image."}]}],
    )  # fmt: skip
    with_image = sdk.chat.completions.create(
        model=f"{MODEL}:short", max_tokens=5,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Solve the problem in the image."},
            {"type": "image_url", "image_url": {"url": problem_png()}},
        ]}],
    )  # fmt: skip
    assert text_only.usage is not None and with_image.usage is not None
    assert with_image.usage.prompt_tokens - text_only.usage.prompt_tokens >= 64
    details = with_image.usage.prompt_tokens_details
    assert details is not None and details.image_tokens == 67


def test_n_choices(sdk: openai.OpenAI) -> None:
    response = sdk.chat.completions.create(
        model=f"{MODEL}:short", messages=[{"role": "user", "content": PROBLEM}], max_tokens=20, n=2, seed=1,
        temperature=1.0,
    )  # fmt: skip
    assert sorted(choice.index for choice in response.choices) == [0, 1]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400,
         "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "reasoning_mode": "long",
          "reasoning_effort": "none"}, 400, "reasoning_mode,reasoning_effort"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, 400,
         "messages[0].content[0].image_url.url"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}]}]}, 400,
         "messages[0].content[0].image_url.url"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(
    client: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]


def test_invalid_json_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_an_empty_body_and_an_overlong_idempotency_key_are_400s_naming_the_field(
    client: httpx.Client,
) -> None:
    empty = client.post("/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "invalid_json"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    long_key = client.post("/v1/chat/completions", json=body, headers={"Idempotency-Key": "k" * 201})
    assert long_key.status_code == 400, long_key.text
    assert long_key.json()["error"]["param"] == "Idempotency-Key"


def test_an_unknown_caller_learns_nothing_about_the_body(gateway: GatewayProcess) -> None:
    """Authentication comes before validation: a bad body from a wrong key is a 401, not a 400."""
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": "Bearer tg-nope"},
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_wrong_and_revoked_keys_are_refused(gateway: GatewayProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    wrong = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer tg-nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    missing = httpx.get(f"{gateway.base_url}/v1/models")
    assert missing.status_code == 401
    secret = gateway.create_key("to-revoke")
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 200
    key_id = next(line.split()[0] for line in gateway.cli("keys", "list").splitlines() if "to-revoke" in line)
    gateway.cli("keys", "revoke", key_id)
    assert httpx.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 401
    assert "revoked" in gateway.cli("keys", "list")


def test_health_ready_metrics(gateway: GatewayProcess, client: httpx.Client) -> None:
    assert httpx.get(f"{gateway.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.base_url}/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post(
        "/v1/chat/completions",
        json={"model": f"{MODEL}:short", "max_tokens": 3, "messages": [{"role": "user", "content": "1 + 1"}]},
    )
    text = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'thinkgate_requests_total{mode="short",model="thinkgate-arith",status=' in text
    assert "thinkgate_tokens_total" in text
