"""Mode resolution: every dialect, its budgets, and conflicts named by field."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import ConflictingFields, InvalidRequest
from app.pipeline.modes import resolve_mode
from app.profiles.profile import ProfileRegistry
from app.protocols.chat.adapter import turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest

PROFILES = ProfileRegistry.from_dir(Path(__file__).resolve().parents[2] / "models" / "profiles")
ARITH = PROFILES.by_name("thinkgate-arith")
PLAIN = PROFILES.by_name("plain")


def decide(
    profile: Any = ARITH, model: str = "thinkgate-arith", text: str = "hello there", **fields: Any
) -> Any:
    request = ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}], **fields}
    )
    return resolve_mode(turn_from_chat(request), profile)


@pytest.mark.parametrize(
    ("fields", "mode", "source"),
    [
        ({"reasoning_mode": "long"}, "long", "reasoning_mode"),
        ({"reasoning_mode": "short"}, "short", "reasoning_mode"),
        ({"model": "thinkgate-arith:long"}, "long", "model"),
        ({"model": "thinkgate-arith:short"}, "short", "model"),
        ({"reasoning_effort": "none"}, "short", "reasoning_effort"),
        ({"reasoning_effort": "minimal"}, "short", "reasoning_effort"),
        ({"reasoning_effort": "low"}, "long", "reasoning_effort"),
        ({"reasoning_effort": "high"}, "long", "reasoning_effort"),
        ({"reasoning": {"enabled": False}}, "short", "reasoning.enabled"),
        ({"reasoning": {"enabled": True}}, "long", "reasoning.enabled"),
        ({"reasoning": {"effort": "medium"}}, "long", "reasoning.effort"),
        ({"reasoning": {"max_tokens": 100}}, "long", "reasoning.max_tokens"),
        ({"reasoning": {"max_tokens": 0}}, "short", "reasoning.max_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 300}}, "long", "thinking.type"),
        ({"thinking": {"type": "disabled"}}, "short", "thinking.type"),
        ({"chat_template_kwargs": {"enable_thinking": True}}, "long", "chat_template_kwargs.enable_thinking"),
        (
            {"chat_template_kwargs": {"enable_thinking": False}},
            "short",
            "chat_template_kwargs.enable_thinking",
        ),
        ({"chat_template_kwargs": {"thinking": False}}, "short", "chat_template_kwargs.thinking"),
    ],
)
def test_each_dialect_decides(fields: dict[str, Any], mode: str, source: str) -> None:
    decision = decide(**fields)
    assert (decision.mode, decision.source) == (mode, source)
    assert decision.reason == f"explicit: {source}"


def test_effort_sets_the_profile_budget() -> None:
    assert decide(reasoning_effort="low").thinking_budget == ARITH.budgets["low"]
    assert decide(reasoning_effort="high").thinking_budget == ARITH.budgets["high"]
    assert decide(reasoning={"effort": "medium"}).thinking_budget == ARITH.budgets["medium"]


def test_explicit_budget_beats_effort_default() -> None:
    decision = decide(reasoning_effort="high", reasoning={"max_tokens": 123})
    assert (decision.thinking_budget, decision.effort) == (123, "high")
    assert decide(thinking={"type": "enabled", "budget_tokens": 77}).thinking_budget == 77


def test_long_without_budget_is_bounded_only_by_max_tokens() -> None:
    assert decide(reasoning_mode="long").thinking_budget is None


def test_short_has_no_budget() -> None:
    assert decide(reasoning_effort="none").thinking_budget is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"reasoning_mode": "long", "reasoning_effort": "none"}, "reasoning_mode,reasoning_effort"),
        ({"model": "thinkgate-arith:short", "thinking": {"type": "enabled"}}, "model,thinking.type"),
        ({"reasoning": {"enabled": True}, "chat_template_kwargs": {"enable_thinking": False}},
         "reasoning.enabled,chat_template_kwargs.enable_thinking"),
        ({"reasoning_effort": "high", "reasoning": {"effort": "minimal"}},
         "reasoning_effort,reasoning.effort"),
    ],
)  # fmt: skip
def test_contradictions_name_both_fields(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ConflictingFields) as caught:
        decide(**fields)
    assert caught.value.param == named
    assert caught.value.status == 400
    for field_name in named.split(","):
        assert field_name in caught.value.message


def test_different_budgets_conflict() -> None:
    with pytest.raises(ConflictingFields) as caught:
        decide(reasoning={"max_tokens": 10}, thinking={"type": "enabled", "budget_tokens": 20})
    assert caught.value.param == "reasoning.max_tokens,thinking.budget_tokens"


def test_agreeing_signals_are_fine() -> None:
    decision = decide(reasoning_mode="long", reasoning_effort="medium", model="thinkgate-arith:long")
    assert decision.mode == "long" and decision.source == "reasoning_mode"


def test_auto_defers_to_the_router() -> None:
    assert decide(reasoning_mode="auto", text="What is 123456 + 654321?").mode == "long"
    assert decide(text="hi, how are you today?").mode == "short"
    decision = decide(text="Compute 98 * 76.")
    assert decision.source == "auto" and decision.reason.startswith("auto: ")


def test_reasoning_can_be_hidden() -> None:
    assert decide(include_reasoning=False).include_reasoning is False
    assert decide(reasoning={"exclude": True, "effort": "low"}).include_reasoning is False
    assert decide().include_reasoning is True


def test_plain_models_have_no_long_mode() -> None:
    assert decide(PLAIN, model="llama", text="prove that sqrt 2 is irrational").mode == "short"
    with pytest.raises(InvalidRequest) as caught:
        decide(PLAIN, model="llama", reasoning_effort="high")
    assert caught.value.param == "reasoning_effort"


def test_non_boolean_template_switch_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decide(chat_template_kwargs={"enable_thinking": "yes"})
    assert caught.value.param == "chat_template_kwargs.enable_thinking"


ESCALATING = dataclasses.replace(ARITH, escalate_below=-1.0)


def test_auto_long_decisions_escalate_on_a_profile_that_asks() -> None:
    """Auto mode's long decisions are answered short first (pipeline/escalate.py) when the profile
    sets `[router] escalate_below`; the decision stays the router's (long, its reason)."""
    decision = decide(ESCALATING, text="What is 123456 + 654321?")
    assert (decision.mode, decision.source, decision.escalate_below) == ("long", "auto", -1.0)
    assert decision.reason == "auto: arithmetic expression"
    unasked = dataclasses.replace(ARITH, escalate_below=None)
    assert decide(unasked, text="What is 123456 + 654321?").escalate_below is None


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("hi, how are you today?", {}),  # the router says short: nothing to escalate
        ("What is 12 + 30?", {"reasoning_mode": "long"}),  # explicit modes decide themselves
        ("What is 12 + 30?", {"reasoning_effort": "low"}),
        ("What is 12 + 30?", {"model": "thinkgate-arith:long"}),
        ("What is 12 + 30?", {"n": 2, "temperature": 0.5}),  # several choices
        ("What is 12 + 30?", {"tools": [{"type": "function", "function": {"name": "calc"}}]}),
    ],
)
def test_other_turns_do_not_escalate(text: str, fields: dict[str, Any]) -> None:
    assert decide(ESCALATING, text=text, **fields).escalate_below is None


def test_always_thinking_models_do_not_escalate() -> None:
    thinker = dataclasses.replace(ESCALATING, always_thinks=True)
    assert decide(thinker, text="What is 12 + 30?").escalate_below is None
