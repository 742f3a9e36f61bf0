"""The Responses door's translation, without a gateway: input items into the pipeline's `Turn`,
the request's tools and formats into the engine's chat fields, and the sealing of reasoning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.core.errors import InvalidRequest
from app.pipeline.turn import Image
from app.protocols.responses.adapter import turn_from_responses
from app.protocols.responses.sealing import KEY_FILE, ReasoningSealer, sealer_for
from app.protocols.responses.store import _dump, _load, conversation
from app.protocols.responses.types import ResponsesRequest


def turn(**fields: Any) -> Any:
    return turn_from_responses(ResponsesRequest.model_validate({"model": "m", **fields}))


def test_items_become_chat_messages() -> None:
    result = turn(
        instructions="Be brief.",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look: "},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "hmm"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "two"}],
            },
        ],
    )
    system, user, assistant, tool1, tool2 = result.messages
    assert (system.role, system.content) == ("system", "Be brief.")
    assert user.content == ["look: ", Image("data:image/png;base64,AA", "input[0].content[1]")]
    assert assistant.role == "assistant" and assistant.content is None
    assert assistant.reasoning == "hmm"
    assert [c["id"] for c in assistant.tool_calls or []] == ["c1", "c2"]
    assert assistant.tool_calls and assistant.tool_calls[1]["function"] == {
        "name": "g",
        "arguments": '{"a":1}',
    }
    assert (tool1.role, tool1.tool_call_id, tool1.content) == ("tool", "c1", "one")
    assert (tool2.tool_call_id, tool2.content) == ("c2", "two")


def test_sampling_tools_and_format() -> None:
    result = turn(
        input="hi",
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}},
        user="u",
        reasoning={"effort": "low"},
        max_output_tokens=9,
    )
    assert result.sampling == {
        "parallel_tool_calls": False,
        "user": "u",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"},
                                                                   "strict": True}},
    }  # fmt: skip
    assert [(s.field, s.mode, s.effort) for s in result.signals] == [("reasoning.effort", "long", "low")]
    assert result.max_tokens == 9


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}, {"type": "code_interpreter"}]}, "tools[1].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ],
)
def test_what_cannot_run_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        turn(**{"input": "hi", **fields})
    assert caught.value.param == param


def test_an_unknown_effort_is_refused_at_the_edge() -> None:
    with pytest.raises(ValidationError) as caught:
        ResponsesRequest.model_validate({"model": "m", "input": "hi", "reasoning": {"effort": "extreme"}})
    assert caught.value.errors()[0]["loc"] == ("reasoning", "effort")


def test_the_optional_tools_codex_sends_are_left_out() -> None:
    function = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
    namespace = {"type": "namespace", "name": "multi_agent_v1", "tools": [function]}
    result = turn(input="hi", tools=[function, {"type": "web_search"}, namespace])
    assert [tool["function"]["name"] for tool in result.sampling["tools"]] == ["exec_command"]


def test_sealed_reasoning_opens_for_its_key_only() -> None:
    sealer = ReasoningSealer([b"k1"])
    blob = sealer.seal("my thoughts", "key-a")
    assert "thoughts" not in blob
    assert sealer.open(blob, "key-a", "p") == "my thoughts"
    for bad, owner in (
        (blob, "key-b"),
        (blob[:-2] + "AA", "key-a"),
        ("tgr1.%%%", "key-a"),
        ("other", "key-a"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            sealer.open(bad, owner, "p")
        assert caught.value.param == "p"
    with pytest.raises(InvalidRequest):  # another gateway's key
        ReasoningSealer([b"k2"]).open(blob, "key-a", "p")


def test_keys_rotate_the_first_seals_all_open() -> None:
    old = ReasoningSealer([b"old"]).seal("x", "o")
    rotated = ReasoningSealer([b"new", b"old"])
    assert rotated.open(old, "o", "p") == "x"
    assert ReasoningSealer([b"new"]).open(rotated.seal("y", "o"), "o", "p") == "y"


def test_a_generated_key_is_kept_in_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/t.db")
    blob = sealer_for(settings).seal("x", "o")
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert sealer_for(settings).open(blob, "o", "p") == "x"  # the same key on the next start


def test_the_opener_puts_sealed_reasoning_on_the_assistant_message() -> None:
    sealer = ReasoningSealer([b"k"])
    request = ResponsesRequest.model_validate(
        {"model": "m", "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": sealer.seal("secret plan", "me")},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        ]}
    )  # fmt: skip
    result = turn_from_responses(request, opener=lambda blob, param: sealer.open(blob, "me", param))
    assert (result.messages[0].content, result.messages[0].reasoning) == ("done", "secret plan")
    with pytest.raises(InvalidRequest):
        turn_from_responses(request, opener=lambda blob, param: sealer.open(blob, "you", param))


def test_the_stored_conversation_round_trips() -> None:
    first = turn(
        instructions="sys",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "u"}],
            }
        ],
    )
    response = {"output": [
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    ]}  # fmt: skip
    history = [_load(_dump(m)) for m in conversation(first.messages, response)]
    assert [m.role for m in history] == ["user", "assistant"]  # instructions do not carry over
    assert history[0].content == ["a", Image("u", "previous_response_id")]
    assert history[1].reasoning == "r" and history[1].content is None
    assert history[1].tool_calls == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
