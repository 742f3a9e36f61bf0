"""Tools and reasoning on every door, and dialect tolerance, in the pipeline (no engine needed).

A profile carries the engine's tool-call parser or says its engine cannot run tools (offered tools
are then dropped with a header, insisting on one is a 400); it says how its family wants past
reasoning replayed; efforts go from none to max; Qwen3's soft switches are one more dialect."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.auth.principal import ANONYMOUS, Principal
from app.core.errors import ConflictingFields, InvalidRequest, PermissionDenied
from app.engine.launcher import engine_command
from app.pipeline.prepare import TOOLS_NOTICE, PreparedChat, prepare_chat
from app.pipeline.turn import Message, Turn
from app.profiles.profile import ModelProfile, ProfileError, ProfileRegistry, parse_profile
from app.protocols.chat.adapter import turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest
from tests.pipeline.test_prepare import MEDIA, PROFILES

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "x" * 40,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    for i in range(36)
]


def registry(**changes: Any) -> ProfileRegistry:
    """The bundled model's profile, changed."""
    return ProfileRegistry([replace(PROFILES.by_name("thinkgate-arith"), **changes)])


def prepare(
    body: dict[str, Any], profiles: ProfileRegistry = PROFILES, principal: Principal = ANONYMOUS
) -> PreparedChat:
    request = ChatCompletionRequest.model_validate({"model": "thinkgate-arith", **body})
    return prepare_chat(turn_from_chat(request), principal, profiles, MEDIA)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- profiles ------------------------------------------------------------------------------------


def test_profiles_carry_the_tool_parser_and_the_reasoning_replay() -> None:
    arith = PROFILES.by_name("thinkgate-arith")
    assert (arith.tools, arith.tool_parser, arith.keep_reasoning) == (True, "hermes", "never")
    assert PROFILES.by_name("deepseek-r1").tools is False
    v31 = PROFILES.by_name("deepseek-v3.1")
    assert (v31.keep_reasoning, v31.reasoning_field, v31.tool_parser) == (
        "tool_loops",
        "reasoning_content",
        "deepseek_v31",
    )
    # The upper efforts default to 2x and 4x high; a profile may name them.
    assert (arith.budgets["xhigh"], arith.budgets["max"]) == (
        2 * arith.budgets["high"],
        4 * arith.budgets["high"],
    )
    named = parse_profile({"name": "p", "thinking": {"budgets": {"high": 10, "max": 15}}})
    assert (named.budgets["xhigh"], named.budgets["max"]) == (20, 15)
    for bad in (
        {"thinking": {"keep_reasoning": "sometimes"}},
        {"thinking": {"reasoning_field": "thoughts"}},
        {"tools": {"enabled": "no"}},
        {"tools": {"parsers": "hermes"}},
        {"thinking": {"budgets": {"ultra": 5}}},
    ):
        with pytest.raises(ProfileError):
            parse_profile({"name": "p", **bad})


def test_the_embedded_engine_starts_with_tools_and_cached_token_counts() -> None:
    command = engine_command(PROFILES.by_name("thinkgate-arith"), Path("/m"), 8000)
    joined = " ".join(command)
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in joined
    assert "--enable-prompt-tokens-details" in command
    no_tools = engine_command(PROFILES.by_name("deepseek-r1"), Path("/m"), 8000)
    assert "--enable-auto-tool-choice" not in no_tools and "--tool-call-parser" not in no_tools
    assert "--enable-prompt-tokens-details" in no_tools


# -- tools ----------------------------------------------------------------------------------------


def test_tools_reach_an_engine_that_runs_them_and_count_in_the_prompt_bound() -> None:
    without = prepare({"messages": ask("hi")})
    offered = prepare({"messages": ask("hi"), "tools": TOOLS, "tool_choice": "auto"})
    assert offered.body["tools"] == TOOLS and offered.body["tool_choice"] == "auto"
    assert offered.notices == {}
    assert offered.prompt_bound > without.prompt_bound + len(str(TOOLS))


def test_offered_tools_are_dropped_on_a_model_that_cannot_run_them() -> None:
    no_tools = registry(tools=False, tool_parser=None)
    without = prepare({"messages": ask("hi")}, no_tools)
    for choice in ({}, {"tool_choice": "auto"}, {"tool_choice": "none"}):
        prepared = prepare(
            {"messages": ask("hi"), "tools": TOOLS, "parallel_tool_calls": True, **choice}, no_tools
        )
        assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(prepared.body)
        assert prepared.notices == {TOOLS_NOTICE: "dropped"}
        assert prepared.prompt_bound == without.prompt_bound  # dropped tools are not reserved for
    assert prepare({"messages": ask("hi")}, no_tools).notices == {}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "tool_1"}}])
def test_insisting_on_a_tool_call_on_such_a_model_is_a_400_naming_tool_choice(choice: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        prepare({"messages": ask("hi"), "tools": TOOLS, "tool_choice": choice}, registry(tools=False))
    assert caught.value.param == "tool_choice" and "cannot call tools" in caught.value.message


# -- past reasoning -------------------------------------------------------------------------------

LOOP = [
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "one", "reasoning_content": "OLD-THOUGHT"},
    {"role": "user", "content": "second"},
    {
        "role": "assistant",
        "content": None,
        "reasoning": "LOOP-THOUGHT",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "tool_1", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
]


@pytest.mark.parametrize(
    ("keep", "field", "replayed"),
    [
        ("never", "reasoning_content", {}),
        ("tool_loops", "reasoning_content", {3: "LOOP-THOUGHT"}),
        ("always", "reasoning", {1: "OLD-THOUGHT", 3: "LOOP-THOUGHT"}),
    ],
)
def test_past_reasoning_is_replayed_as_the_profile_says(
    keep: str, field: str, replayed: dict[int, str]
) -> None:
    prepared = prepare({"messages": LOOP}, registry(keep_reasoning=keep, reasoning_field=field))
    messages = prepared.body["messages"]
    found = {i: m[field] for i, m in enumerate(messages) if field in m}
    assert found == replayed
    assert all(
        "reasoning_content" not in m and "reasoning" not in m
        for i, m in enumerate(messages)
        if i not in replayed
    )
    never = prepare({"messages": LOOP}, registry(keep_reasoning="never"))
    assert prepared.prompt_bound - never.prompt_bound == sum(len(text) for text in replayed.values())


def test_doors_hand_reasoning_in_the_neutral_message() -> None:
    turn = turn_from_chat(ChatCompletionRequest.model_validate({"model": "m", "messages": LOOP}))
    assert [m.reasoning for m in turn.messages] == [None, "OLD-THOUGHT", None, "LOOP-THOUGHT", None]


# -- dialects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_upper_efforts_are_long_with_larger_budgets(effort: str) -> None:
    prepared = prepare({"messages": ask("What is 2 + 2?"), "reasoning_effort": effort})
    budgets = PROFILES.by_name("thinkgate-arith").budgets
    assert prepared.decision.mode == "long" and prepared.decision.effort == effort
    assert prepared.body["thinking_token_budget"] == budgets[effort] > budgets["high"]
    by_reasoning = prepare({"messages": ask("2+2"), "reasoning": {"effort": effort, "summary": "auto"}})
    assert by_reasoning.decision.thinking_budget == budgets[effort]
    with pytest.raises(PermissionDenied):
        prepare(
            {"messages": ask("2+2"), "reasoning_effort": effort},
            principal=Principal("k", "k", max_effort="high"),
        )
    assert prepare(
        {"messages": ask("2+2"), "reasoning_effort": "xhigh"}, principal=Principal("k", "k", max_effort="max")
    )


def test_lenient_fields_are_accepted() -> None:
    routed = prepare({"messages": ask("What is 2 + 2?"), "thinking": {"type": "adaptive"}})
    assert routed.decision.source == "auto"
    cached = prepare(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
                },
                {"role": "user", "content": "hi"},
            ],
            "reasoning": {"summary": "auto"},
        }
    )
    assert cached.body["messages"][0]["content"] == [{"type": "text", "text": "be brief"}]


@pytest.mark.parametrize(
    ("text", "mode"),
    [("What is 2 + 2? /no_think", "short"), ("Prove it /think", "long"), ("/think\n", "long"), ("hi", None)],
)
def test_qwen3_soft_switches_are_a_signal_named_after_their_message(text: str, mode: str | None) -> None:
    messages = [
        {"role": "system", "content": "s"},
        *ask("earlier /no_think"),
        {"role": "assistant", "content": "a"},
    ]
    prepared = prepare({"messages": [*messages, *ask(text)]})
    if mode is None:
        assert prepared.decision.source == "auto"
    else:
        assert (prepared.decision.mode, prepared.decision.source) == (mode, "messages[3].content")


def test_soft_switches_work_on_every_door_and_conflict_like_any_dialect() -> None:
    # A door that is not Chat Completions: a Turn built by hand, content as parts.
    turn = Turn("thinkgate-arith", [Message("user", ["look", "solve it /no_think"], "input[0]")])
    assert prepare_chat(turn, ANONYMOUS, PROFILES, MEDIA).decision.source == "input[0].content"
    with pytest.raises(ConflictingFields) as caught:
        prepare({"messages": ask("2+2 /no_think"), "reasoning_effort": "high"})
    assert caught.value.param == "reasoning_effort,messages[0].content"
    # A word ending in the switch is not one; a model without reasoning ignores them.
    assert prepare({"messages": ask("see foo/think")}).decision.source == "auto"
    plain: ModelProfile = PROFILES.by_name("plain")
    assert (
        prepare({"messages": ask("hi /think")}, ProfileRegistry([replace(plain, match=("*",))])).decision.mode
        == "short"
    )
