"""The Responses API door with the official `openai` client, against a real gateway in front of the
scripted engine (tests/scripted_engine.py): a real model cannot be made to call a tool, or to write
chosen reasoning and answer words, on demand. A plain turn against the real engine is in
test_responses_engine.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from app.protocols.responses import output
from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture, gateway_fixture
from tests.support import GatewayProcess, expected_cost, usage_records

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


engine = engine_fixture()


@pytest.fixture(autouse=True)
def fresh_script(engine: ScriptedEngine) -> None:
    engine.script = Script(reasoning_text="let me think about it", answer_text="the answer is 4")
    engine.requests.clear()


gateway = gateway_fixture()


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key, max_retries=0) as c:
        yield c


def last_chat(engine: ScriptedEngine) -> dict[str, Any]:
    """The last chat request the engine got (not a token count)."""
    return [body for body in engine.requests if "stream" in body][-1]


def ledger_record(gateway: GatewayProcess, response_id: str) -> dict[str, Any]:
    rows = usage_records(gateway.database_url, "id = ?", ("chatcmpl-" + response_id.removeprefix("resp_"),))
    assert len(rows) == 1, response_id
    return dict(rows[0])


def assert_usage_is_the_ledger(gateway: GatewayProcess, response: Any) -> dict[str, Any]:
    record = ledger_record(gateway, response.id)
    usage = response.usage
    assert usage.input_tokens == record["prompt_tokens"]
    assert usage.input_tokens_details.cached_tokens == record["cached_tokens"]
    assert usage.output_tokens == record["completion_tokens"]
    assert usage.output_tokens_details.reasoning_tokens == record["reasoning_tokens"]
    assert record["cost_micros"] == expected_cost(record)
    assert round(float(usage.model_extra["cost"]) * 1_000_000) == record["cost_micros"]
    assert usage.model_extra["reasoning_mode"] == record["mode"]
    return record


def test_a_string_input_gets_reasoning_and_an_answer(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="What is 2+2?", reasoning={"effort": "high", "summary": "auto"}
    )
    assert response.status == "completed"
    assert response.output_text == "the answer is 4"
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None and reasoning.content[0].text == "let me think about it "
    assert [s.text for s in reasoning.summary] == ["let me think about it "]  # the model's own text
    assert response.output[1].type == "message"
    record = assert_usage_is_the_ledger(gateway, response)
    assert (record["mode"], record["mode_source"], record["effort"]) == ("long", "reasoning.effort", "high")
    assert record["status"] == "completed"


def test_instructions_and_items_reach_the_engine_as_chat_messages(
    client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            {"role": "user", "content": "2+2?"},
        ],
        reasoning={"effort": "minimal"},
        max_output_tokens=50,
        temperature=0.5,
        text={"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}},
        safety_identifier="user-7",
    )
    sent = last_chat(engine)
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "Be brief."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "2+2?"),
    ]
    assert sent["chat_template_kwargs"]["enable_thinking"] is False
    assert sent["max_tokens"] == 50 and sent["temperature"] == 0.5 and sent["user"] == "user-7"
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }


def test_a_stream_has_the_events_the_sdk_expects(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="What is 2+2?", reasoning={"summary": "auto"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert reasoning == "let me think about it "
    assert answer == "the answer is 4"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done", "response.reasoning_text.done",
                 "response.reasoning_summary_text.delta"):  # fmt: skip
        assert kind in kinds
    assert final.output_text == "the answer is 4"
    assert_usage_is_the_ledger(gateway, final)


def test_a_function_tool_round_trip(
    gateway: GatewayProcess, client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    engine.script = Script(
        reasoning_text="I need the weather",
        tool_call=("get_weather", {"city": "Paris"}),
        answer_text="It is {result} in Paris",
    )
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert (calls[0].name, calls[0].arguments, calls[0].call_id) == (
        "get_weather",
        '{"city":"Paris"}',
        "call_scripted1",
    )
    assert last_chat(engine)["tools"] == [
        {"type": "function", "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")}}
    ]
    assert_usage_is_the_ledger(gateway, first)
    second = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "It is sunny in Paris"
    sent = last_chat(engine)["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"] == [
        {
            "id": "call_scripted1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_scripted1"}


def test_a_streamed_function_call(
    gateway: GatewayProcess, client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    engine.script = Script(tool_call=("get_weather", {"city": "Oslo"}))
    with client.responses.stream(model=MODEL, input="Weather in Oslo?", tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == '{"city":"Oslo"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.arguments for e in done] == ['{"city":"Oslo"}']
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Oslo"}')]
    assert_usage_is_the_ledger(gateway, final)


def test_max_output_tokens_ends_incomplete(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="What is 2+2?", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert ledger_record(gateway, response.id)["status"] == "length"
    with client.responses.stream(model=MODEL, input="What is 2+2?", max_output_tokens=3) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


def test_unsupported_tool_types_are_a_400_naming_the_type(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=MODEL, input="hi", tools=[{"type": "file_search", "vector_store_ids": ["x"]}]
        )
    assert "'file_search'" in caught.value.message
    assert caught.value.body["param"] == "tools[0].type"  # type: ignore[index]


def test_a_bad_item_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model=MODEL,
            input=[{"type": "function_call_output", "output": "x"}],  # no call_id
        )
    assert caught.value.body["param"] == "input[0].call_id"  # type: ignore[index]


def test_no_key_is_a_401_and_an_unknown_model_a_404(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/responses", json={"model": MODEL, "input": "hi"})
    assert response.status_code == 401
    response = httpx.post(
        f"{gateway.base_url}/v1/responses",
        json={"model": "nope", "input": "hi"},
        headers={"Authorization": f"Bearer {gateway.api_key}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_mode_permissions_and_idempotency_hold(gateway: GatewayProcess) -> None:
    short_only = gateway.create_key("short-only", "--modes", "short")
    limited = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=short_only, max_retries=0)
    with limited, pytest.raises(openai.PermissionDeniedError):
        limited.responses.create(model=MODEL, input="hi", reasoning={"effort": "high"})
    headers = {"Authorization": f"Bearer {gateway.api_key}", "Idempotency-Key": "resp-once"}
    body = {"model": MODEL, "input": "What is 2+2?"}
    first = httpx.post(f"{gateway.base_url}/v1/responses", json=body, headers=headers, timeout=30)
    again = httpx.post(f"{gateway.base_url}/v1/responses", json=body, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(usage_records(gateway.database_url, "idempotency_key = ?", ("resp-once",))) == 1


def test_the_ledger_names_the_door(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi")
    assert ledger_record(gateway, response.id)["api"] == "responses"


def test_previous_response_id_continues_the_conversation(
    gateway: GatewayProcess, client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    first = client.responses.create(model=MODEL, instructions="Be brief.", input="What is 2+2?")
    second = client.responses.create(model=MODEL, input="And 3+3?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = last_chat(engine)["messages"]
    # The earlier instructions do not carry over; the earlier answer does (its reasoning is for the
    # pipeline to keep or drop: the engine's chat template sees answers only).
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "What is 2+2?"),
        ("assistant", "the answer is 4"),
        ("user", "And 3+3?"),
    ]
    assert client.responses.retrieve(first.id).output_text == "the answer is 4"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="again", previous_response_id=first.id)


def test_a_responses_input_items_are_listed_in_pages(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    """GET /v1/responses/{id}/input_items: the request's input (not the earlier turns'), latest first by
    default, in pages the SDK follows; a string input is one user message."""
    first = client.responses.create(model=MODEL, input="What is 2+2?")
    (only,) = client.responses.input_items.list(first.id)
    assert (only.type, only.role, only.content[0].type, only.content[0].text) == (  # type: ignore[union-attr]
        "message",
        "user",
        "input_text",
        "What is 2+2?",
    )
    sent = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And 3+3?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    second = client.responses.create(model=MODEL, input=sent, previous_response_id=first.id)  # type: ignore[arg-type]
    ascending = list(client.responses.input_items.list(second.id, order="asc", limit=1))  # one item a page
    assert [item.type for item in ascending] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]
    assert ascending[2].call_id == "call_1" and ascending[3].output == "sunny"  # type: ignore[union-attr]
    assert ascending[0].content[0].text == "Be brief."  # type: ignore[union-attr]
    assert len({item.id for item in ascending}) == 4
    latest_first = client.responses.input_items.list(second.id)
    assert [item.id for item in latest_first] == [item.id for item in ascending][::-1]
    page = client.responses.input_items.list(second.id, order="asc", limit=2, after=ascending[0].id)
    assert [item.id for item in page.data] == [ascending[1].id, ascending[2].id] and page.has_more
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(second.id, after="msg_nothing")
    assert caught.value.body["param"] == "after"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_items.list(second.id, limit=101)
    assert "limit" in str(caught.value.body)
    other = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=gateway.create_key("lister"), max_retries=0
    )
    with other, pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(second.id)


def test_a_response_of_another_key_is_not_found(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    mine = client.responses.create(model=MODEL, input="What is 2+2?")
    other = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=gateway.create_key("other"), max_retries=0
    )
    with other:
        with pytest.raises(openai.NotFoundError) as caught:
            other.responses.create(model=MODEL, input="and?", previous_response_id=mine.id)
        assert caught.value.body["code"] == "not_found"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(mine.id)
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its own key


def test_ids_no_response_can_have_are_not_found(client: openai.OpenAI) -> None:
    """A NUL (which PostgreSQL's text refuses) or an id longer than any: a 404 naming the field, not a 500."""
    for bad in ("resp_\x00", "resp_" + "x" * 100):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=MODEL, input="hi", previous_response_id=bad)
        assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(bad)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_encrypted_reasoning_round_trip(
    gateway: GatewayProcess, client: openai.OpenAI, engine: ScriptedEngine
) -> None:
    """A stateless client (store: false, as Codex) gets its reasoning sealed and sends it back: the
    gateway opens it into the turn, so the pipeline has the model's own reasoning again."""
    first = client.responses.create(
        model=MODEL, input="What is 2+2?", store=False, include=["reasoning.encrypted_content"]
    )
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert "think" not in reasoning.encrypted_content  # sealed, not encoded
    items = [item.model_dump(exclude_none=True) for item in first.output]
    del items[0]["content"]  # what Codex sends back: the sealed blob and the summary only
    conversation = [{"role": "user", "content": "What is 2+2?"}, *items, {"role": "user", "content": "Sure?"}]
    second = client.responses.create(model=MODEL, input=conversation, store=False)
    assert second.status == "completed"
    assert [m["role"] for m in last_chat(engine)["messages"]] == ["user", "assistant", "user"]

    tampered = dict(items[0])
    blob = tampered["encrypted_content"]
    tampered["encrypted_content"] = blob[:-6] + ("A" if blob[-6] != "A" else "B") + blob[-5:]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=[tampered, {"role": "user", "content": "hi"}], store=False)
    assert caught.value.body["param"] == "input[0].encrypted_content"  # type: ignore[index]
    other = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=gateway.create_key("thief"), max_retries=0
    )
    with other, pytest.raises(openai.BadRequestError):  # sealed for another API key
        other.responses.create(model=MODEL, input=[items[0], {"role": "user", "content": "hi"}], store=False)


def test_an_idempotent_retry_streams_the_stored_response(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    headers = {"Idempotency-Key": "resp-stream-once"}
    first = client.responses.create(model=MODEL, input="What is 2+2?", extra_headers=headers)
    with client.responses.stream(model=MODEL, input="What is 2+2?", extra_headers=headers) as stream:
        kinds = [event.type for event in stream]
        again = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert again.id == first.id and again.output_text == first.output_text == "the answer is 4"
    assert len(usage_records(gateway.database_url, "idempotency_key = ?", ("resp-stream-once",))) == 1


def test_a_client_that_leaves_mid_stream_is_settled_aborted(
    gateway: GatewayProcess, engine: ScriptedEngine
) -> None:
    engine.script = Script(reasoning_tokens=200, token_delay_s=0.01)
    headers = {"Authorization": f"Bearer {gateway.api_key}"}
    body = {"model": MODEL, "input": "What is 2+2?", "stream": True, "reasoning": {"effort": "high"}}
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/responses", json=body, headers=headers, timeout=30
    ) as reply:
        request_id = reply.headers["x-request-id"]
        for line in reply.iter_lines():
            if "response.reasoning_text.delta" in line:
                break  # leave while the model is still reasoning
    deadline = time.monotonic() + 10
    while (record := ledger_record(gateway, output.response_id(request_id)))["status"] == "open":
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.05)
    assert record["status"] == "aborted"
    assert 0 < record["reasoning_tokens"] < 200
    assert record["cost_micros"] == expected_cost(record)
