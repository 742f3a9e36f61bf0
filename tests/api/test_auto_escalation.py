"""Auto mode's escalation through a real gateway process (`pipeline/escalate.py`): a confident short
answer is returned from one engine request; an unsure one is replaced by a long answer, both
attempts in one usage record; the response says which mode answered and why (body, every stream
chunk, headers); the client's own `logprobs` are those of the returned attempt and change nothing
billed. The engine is the scripted one (tests/scripted_engine.py: `token_logprob`), because a real
model cannot be made to produce a chosen confidence. The gateway's profile asks for escalation below
-1.0 (`[router] escalate_below`), so these tests hold whatever the shipped threshold is."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.core.config import REPO_ROOT
from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture
from tests.support import GatewayProcess, expected_cost, start_gateway, usage_records

pytestmark = pytest.mark.slow

ANSWER, REASONING = "The answer is 4.", "two and two make four"  # 4 and 5 tokens
PROMPT_TOKENS = 12  # the scripted engine's count for any prompt
SURE, UNSURE = -0.05, -2.5


engine = engine_fixture()


@pytest.fixture(autouse=True)
def fresh_script(engine: ScriptedEngine) -> None:
    engine.script = Script(answer_text=ANSWER, reasoning_text=REASONING, token_logprob=SURE)
    engine.requests.clear()


@pytest.fixture(scope="module")
def gateway(engine: ScriptedEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("escalation")
    models = workdir / "models"
    shutil.copytree(REPO_ROOT / "models" / "profiles", models / "profiles")
    profile = models / "profiles" / "thinkgate-arith.toml"
    shipped = re.sub(r"(?ms)^\[router\].*?(?=^\[|\Z)", "", profile.read_text())  # whatever it says
    profile.write_text(shipped + "\n[router]\nescalate_below = -1.0\n")
    with start_gateway(workdir, upstreams=[engine.url], env={"THINKGATE_MODELS_DIR": str(models)}) as gateway:
        gateway.api_key = gateway.create_key("escalation")
        yield gateway


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 2?"}], **fields}


def post(gateway: GatewayProcess, **fields: Any) -> httpx.Response:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json=body(**fields),
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def stream(gateway: GatewayProcess, **fields: Any) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        json=body(stream=True, stream_options={"include_usage": True}, **fields),
        headers={"Authorization": f"Bearer {gateway.api_key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return response.headers, [json.loads(line) for line in lines[:-1]]


def record(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    (row,) = usage_records(gateway.database_url, "id = ?", (request_id,))
    return dict(row)


def assert_usage_is_the_record(usage: dict[str, Any], row: dict[str, Any], mode: str) -> None:
    """The response's usage is the record's, and the record is booked (and priced) in the mode that
    answered, whatever mode it was opened in (the router's long turn)."""
    assert usage["prompt_tokens"] == row["prompt_tokens"]
    assert usage["completion_tokens"] == row["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == row["reasoning_tokens"]
    assert round(usage["cost"] * 1_000_000) == row["cost_micros"] == expected_cost(row)
    assert row["status"] == "completed" and row["mode"] == mode


def test_a_confident_short_answer_takes_one_engine_request(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    response = post(gateway)
    (sent,) = engine.requests
    assert sent["chat_template_kwargs"] == {"enable_thinking": False} and sent["logprobs"] is True
    reply = response.json()
    message = reply["choices"][0]["message"]
    assert message["content"] == ANSWER and "reasoning_content" not in message
    reason = "auto: arithmetic expression; short answer confident (-0.05 >= -1)"
    assert (reply["reasoning_mode"], reply["reasoning_mode_reason"]) == ("short", reason)
    assert response.headers["x-reasoning-mode"] == "short"
    assert response.headers["x-reasoning-mode-reason"] == reason
    row = record(gateway, reply["id"])
    assert (row["prompt_tokens"], row["reasoning_tokens"], row["answer_tokens"]) == (PROMPT_TOKENS, 0, 4)
    assert_usage_is_the_record(reply["usage"], row, "short")
    assert response.headers["x-usage-cost"] == f"0.{row['cost_micros']:06d}"


def test_an_unsure_short_answer_is_escalated_in_one_usage_record(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    engine.script.token_logprob = UNSURE
    response = post(gateway, max_tokens=100)
    short, long = engine.requests
    assert short["chat_template_kwargs"] == {"enable_thinking": False} and short["logprobs"] is True
    assert long["chat_template_kwargs"] == {"enable_thinking": True} and "logprobs" not in long
    assert long["max_tokens"] == 100 - 4
    reply = response.json()
    message = reply["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == (REASONING + " ", ANSWER)
    reason = "auto: arithmetic expression; escalated: short answer confidence -2.50 < -1"
    assert (reply["reasoning_mode"], reply["reasoning_mode_reason"]) == ("long", reason)
    assert response.headers["x-reasoning-mode-reason"] == reason
    row = record(gateway, reply["id"])
    # Both attempts, as the engine counted them: two prompts, the short answer (4), the long
    # attempt's reasoning (5) and answer (4).
    assert (row["prompt_tokens"], row["reasoning_tokens"], row["answer_tokens"]) == (2 * PROMPT_TOKENS, 5, 8)
    assert_usage_is_the_record(reply["usage"], row, "long")


@pytest.mark.parametrize(("logprob", "mode"), [(SURE, "short"), (UNSURE, "long")])
def test_streams_are_sent_once_the_short_answer_is_judged(
    gateway: GatewayProcess, engine: ScriptedEngine, logprob: float, mode: str
) -> None:
    engine.script.token_logprob = logprob
    headers, chunks = stream(gateway)
    assert headers["x-reasoning-mode"] == mode
    assert {chunk["reasoning_mode"] for chunk in chunks} == {mode}
    deltas = [choice["delta"] for chunk in chunks for choice in chunk["choices"]]
    answer = "".join(delta.get("content") or "" for delta in deltas)
    reasoning = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    assert answer == ANSWER  # one answer: the short one was held back until it was judged
    assert reasoning == (REASONING + " " if mode == "long" else "")
    assert all(choice.get("logprobs") is None for chunk in chunks for choice in chunk["choices"])
    final = chunks[-1]
    assert final["choices"] == []
    row = record(gateway, final["id"])
    assert row["prompt_tokens"] == PROMPT_TOKENS * len(engine.requests)
    assert len(engine.requests) == (1 if mode == "short" else 2)
    assert_usage_is_the_record(final["usage"], row, mode)


@pytest.mark.parametrize(("logprob", "mode"), [(SURE, "short"), (UNSURE, "long")])
def test_the_clients_logprobs_are_the_returned_answers_and_bill_nothing_more(
    gateway: GatewayProcess, engine: ScriptedEngine, logprob: float, mode: str
) -> None:
    engine.script.token_logprob = logprob
    _, plain = stream(gateway)
    _, chunks = stream(gateway, logprobs=True)
    assert {chunk["reasoning_mode"] for chunk in chunks} == {mode}
    answered = [c for chunk in chunks for c in chunk["choices"] if c["delta"].get("content")]
    assert answered and all(c["logprobs"]["content"][0]["logprob"] == logprob for c in answered)
    without, with_logprobs = record(gateway, plain[-1]["id"]), record(gateway, chunks[-1]["id"])
    for column in ("prompt_tokens", "reasoning_tokens", "answer_tokens", "cost_micros"):
        assert with_logprobs[column] == without[column], column


@pytest.mark.parametrize(("logprob", "mode"), [(SURE, "short"), (UNSURE, "long")])
def test_a_whole_body_carries_the_answers_logprobs_when_asked(
    gateway: GatewayProcess, engine: ScriptedEngine, logprob: float, mode: str
) -> None:
    engine.script.token_logprob = logprob
    plain, asked = post(gateway).json(), post(gateway, logprobs=True).json()
    assert plain["choices"][0]["logprobs"] is None and asked["reasoning_mode"] == mode
    tokens = asked["choices"][0]["logprobs"]["content"]  # the answer's four: not the short attempt's too
    assert len(tokens) == 4 and "".join(t["token"] for t in tokens) == ANSWER
    assert {t["logprob"] for t in tokens} == {logprob}


def test_explicit_modes_are_not_tried_short_first(gateway: GatewayProcess, engine: ScriptedEngine) -> None:
    engine.script.token_logprob = UNSURE
    reply = post(gateway, reasoning_mode="long").json()
    (sent,) = engine.requests
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert (reply["reasoning_mode"], reply["reasoning_mode_reason"]) == ("long", "explicit: reasoning_mode")
