"""Mode resolution: the reasoning-mode signals of a turn, turned into one `ModeDecision`.

The front doors read their dialects into signals (`Signal`), each naming the field it came from,
with the vocabulary below: a model suffix (`<id>:long`), an effort (none/minimal -> short; the others
-> long with that effort's budget), a thinking switch, a thinking budget. The Chat Completions door
reads `reasoning_mode`, the suffix, `reasoning_effort`, OpenRouter's `reasoning{}`, Anthropic's and
Moonshot's `thinking{}`, and `chat_template_kwargs.enable_thinking / .thinking`. On every door, the
pipeline adds Qwen3's soft switches, `/think` or `/no_think` at the end of the last user message
(`soft_switch_signal`). Two explicit signals that disagree are a 400 naming both fields. No signal:
the auto router; when it picks long mode on a profile with `[router] escalate_below`, the turn is
answered short first and escalated to long only when that answer is unsure (`escalate_below`,
`pipeline/escalate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import ConflictingFields, InvalidRequest
from app.pipeline.autoroute import route
from app.pipeline.turn import Signal, Turn
from app.profiles.profile import Mode, ModelProfile

MODE_SUFFIXES: dict[str, Mode] = {":long": "long", ":short": "short"}
SOFT_SWITCHES: dict[str, Mode] = {"/no_think": "short", "/think": "long"}


@dataclass(frozen=True, slots=True)
class ModeDecision:
    mode: Mode
    source: str  # the field that decided, or "auto"
    reason: str  # human-readable why, returned to the client
    effort: str | None = None
    thinking_budget: int | None = None  # cap on reasoning tokens; None = bounded only by max tokens
    include_reasoning: bool = True
    # Auto mode's escalation: answer short first, and long when the short answer's confidence (its
    # lowest token log-probability) is below this; None: answer in `mode` straight away.
    escalate_below: float | None = None


def split_model_suffix(model: str) -> tuple[str, Mode | None]:
    for suffix, mode in MODE_SUFFIXES.items():
        if model.endswith(suffix):
            return model[: -len(suffix)], mode
    return model, None


# The dialects' vocabulary, for the front doors: each turns one field of its wire format into a Signal.


def suffix_signal(model: str) -> Signal | None:
    """`<id>:long` / `<id>:short`."""
    mode = split_model_suffix(model)[1]
    return Signal("model", mode) if mode else None


def effort_signal(field: str, effort: str) -> Signal:
    """An effort: none/minimal ask for short-CoT, the others for long-CoT with that effort's budget."""
    return Signal(field, "short" if effort in ("none", "minimal") else "long", effort=effort)


def switch_signal(field: str, enabled: bool) -> Signal:
    """A thinking switch: on is long-CoT, off short-CoT."""
    return Signal(field, "long" if enabled else "short")


def budget_signal(field: str, budget: int) -> Signal:
    """A thinking budget in tokens: 0 turns thinking off, more asks for long-CoT within it."""
    return Signal(field, "long" if budget > 0 else "short", budget=budget or None)


def soft_switch_signal(turn: Turn) -> Signal | None:
    """Qwen3's soft switch: `/think` or `/no_think` ending the last user message's text."""
    for message in reversed(turn.messages):
        if message.role != "user":
            continue
        content = message.content
        texts = [content] if isinstance(content, str) else [p for p in content or () if isinstance(p, str)]
        tail = texts[-1].rstrip() if texts else ""
        for switch, mode in SOFT_SWITCHES.items():
            if tail.endswith(switch) and (len(tail) == len(switch) or tail[-len(switch) - 1].isspace()):
                return Signal(f"{message.param}.content", mode)
        return None
    return None


def _agree(signals: list[Signal]) -> Mode | None:
    decided: Signal | None = None
    for signal in signals:
        if signal.mode is None:
            continue
        if decided is None:
            decided = signal
        elif signal.mode != decided.mode:
            raise ConflictingFields(
                f"'{decided.field}' asks for {decided.mode} reasoning but '{signal.field}' asks for "
                f"{signal.mode}; send one of them",
                param=f"{decided.field},{signal.field}",
            )
    return decided.mode if decided else None


def _single(signals: list[Signal], attribute: str) -> int | str | None:
    found: Signal | None = None
    for signal in signals:
        value = getattr(signal, attribute)
        if value is None:
            continue
        if found is not None and getattr(found, attribute) != value:
            raise ConflictingFields(
                f"'{found.field}' and '{signal.field}' give different {attribute}s; send one of them",
                param=f"{found.field},{signal.field}",
            )
        found = found or signal
    return getattr(found, attribute) if found else None


def _escalates(turn: Turn, profile: ModelProfile) -> bool:
    """Whether auto mode's long decision is tried short first: the profile asks for it, switches
    thinking off by its template (not an always-thinking model) and the turn wants one plain answer."""
    return (
        profile.escalate_below is not None
        and not profile.always_thinks
        and turn.n == 1
        and not turn.sampling.get("tools")
    )


def resolve_mode(turn: Turn, profile: ModelProfile) -> ModeDecision:
    """One decision from every signal of the turn: explicit signals must agree (else a 400 naming
    both fields); none at all leaves it to the auto router."""
    signals = turn.signals
    if profile.reasoning and (soft := soft_switch_signal(turn)) is not None:
        signals = [*signals, soft]
    mode = _agree(signals)
    budget = _single(signals, "budget")
    effort = _single(signals, "effort")
    include = turn.include_reasoning

    if mode is None:
        if not profile.reasoning:
            return ModeDecision("short", "auto", "model has no reasoning mode", include_reasoning=include)
        text, has_image = turn.last_user_text()
        routed = route(text, has_image=has_image, image_alone=profile.image_alone)
        mode, source, reason = routed.mode, "auto", f"auto: {routed.reason}"
        if mode == "long" and _escalates(turn, profile):
            return ModeDecision(
                "long", source, reason, include_reasoning=include, escalate_below=profile.escalate_below
            )
    else:
        source = next(s.field for s in signals if s.mode is not None)
        reason = f"explicit: {source}"
        if mode == "long" and not profile.reasoning:
            raise InvalidRequest(
                f"model {profile.name!r} has no long-CoT mode (asked for by '{source}')", param=source
            )

    if mode == "short":
        return ModeDecision(
            "short", source, reason, effort=str(effort) if effort else None, include_reasoning=include
        )
    if budget is None and effort is not None:
        budget = profile.budget_for(str(effort))
    return ModeDecision(
        "long",
        source,
        reason,
        effort=str(effort) if effort else None,
        thinking_budget=int(budget) if budget is not None else None,
        include_reasoning=include,
    )
