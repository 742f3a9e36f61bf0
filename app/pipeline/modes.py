"""Mode resolution: every reasoning dialect a client may speak, turned into one `ModeDecision`.

Explicit signals, each naming the field it came from:
    reasoning_mode                      "long" | "short" ("auto" defers)
    model suffix                        "<id>:long" | "<id>:short"
    reasoning_effort                    none/minimal -> short; low/medium/high -> long + budget
    reasoning.{enabled,effort,max_tokens,exclude}   (OpenRouter)
    thinking.{type,budget_tokens}       (Anthropic / Moonshot)
    chat_template_kwargs.enable_thinking / .thinking   (vLLM / Qwen3 / DeepSeek-V3.1)
Two explicit signals that disagree are a 400 naming both fields. No signal: the auto router.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.errors import ConflictingFields, InvalidRequest
from app.pipeline.autoroute import route
from app.profiles.profile import Mode, ModelProfile
from app.protocols.chat.types import ChatCompletionRequest, ChatMessage

MODE_SUFFIXES: dict[str, Mode] = {":long": "long", ":short": "short"}


@dataclass(frozen=True, slots=True)
class ModeDecision:
    mode: Mode
    source: str  # the field that decided, or "auto"
    reason: str  # human-readable why, returned to the client
    effort: str | None = None
    thinking_budget: int | None = None  # cap on reasoning tokens; None = bounded only by max tokens
    include_reasoning: bool = True

    @property
    def header(self) -> str:
        return f"{self.mode}; source={self.source}"


@dataclass(frozen=True, slots=True)
class _Signal:
    field: str
    mode: Mode | None  # None: the field only sets a budget/effort
    budget: int | None = None
    effort: str | None = None


def split_model_suffix(model: str) -> tuple[str, Mode | None]:
    for suffix, mode in MODE_SUFFIXES.items():
        if model.endswith(suffix):
            return model[: -len(suffix)], mode
    return model, None


def _effort_mode(effort: str) -> Mode:
    return "short" if effort in ("none", "minimal") else "long"


def _signals(request: ChatCompletionRequest, suffix_mode: Mode | None) -> list[_Signal]:
    signals: list[_Signal] = []
    if request.reasoning_mode in ("long", "short"):
        signals.append(_Signal("reasoning_mode", request.reasoning_mode))
    if suffix_mode:
        signals.append(_Signal("model", suffix_mode))
    if request.reasoning_effort:
        effort = request.reasoning_effort
        signals.append(_Signal("reasoning_effort", _effort_mode(effort), effort=effort))
    if reasoning := request.reasoning:
        if reasoning.enabled is not None:
            signals.append(_Signal("reasoning.enabled", "long" if reasoning.enabled else "short"))
        if reasoning.effort:
            signals.append(
                _Signal("reasoning.effort", _effort_mode(reasoning.effort), effort=reasoning.effort)
            )
        if reasoning.max_tokens is not None:
            budget = reasoning.max_tokens
            signals.append(
                _Signal("reasoning.max_tokens", "long" if budget > 0 else "short", budget=budget or None)
            )
    if thinking := request.thinking:
        if thinking.type != "auto":
            signals.append(_Signal("thinking.type", "long" if thinking.type == "enabled" else "short"))
        if thinking.budget_tokens is not None:
            if thinking.type == "disabled":
                signals.append(_Signal("thinking.budget_tokens", None))
            else:
                budget = thinking.budget_tokens
                signals.append(
                    _Signal(
                        "thinking.budget_tokens", "long" if budget > 0 else "short", budget=budget or None
                    )
                )
    kwargs = request.chat_template_kwargs or {}
    for key in ("enable_thinking", "thinking"):
        if key in kwargs:
            value = kwargs[key]
            if not isinstance(value, bool):
                raise InvalidRequest(
                    f"chat_template_kwargs.{key} must be true or false", param=f"chat_template_kwargs.{key}"
                )
            signals.append(_Signal(f"chat_template_kwargs.{key}", "long" if value else "short"))
    return signals


def _agree(signals: list[_Signal]) -> Mode | None:
    decided: _Signal | None = None
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


def _single(signals: list[_Signal], attribute: str) -> int | str | None:
    found: _Signal | None = None
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


def last_user_text(messages: list[ChatMessage]) -> tuple[str, bool]:
    """Text of the last user message and whether any message carries an image."""
    has_image = False
    text = ""
    for message in messages:
        content = message.content
        if isinstance(content, list):
            has_image = has_image or any(part.type == "image_url" for part in content)
        if message.role == "user":
            if isinstance(content, str):
                text = content
            elif isinstance(content, list):
                text = "\n".join(part.text for part in content if part.type == "text")
    return text, has_image


def resolve_mode(
    request: ChatCompletionRequest, profile: ModelProfile, suffix_mode: Mode | None
) -> ModeDecision:
    signals = _signals(request, suffix_mode)
    mode = _agree(signals)
    budget = _single(signals, "budget")
    effort = _single(signals, "effort")
    include = request.include_reasoning is not False and not (request.reasoning and request.reasoning.exclude)

    if mode is None:
        if not profile.reasoning:
            return ModeDecision("short", "auto", "model has no reasoning mode", include_reasoning=include)
        text, has_image = last_user_text(request.messages)
        routed = route(text, has_image=has_image)
        mode, source, reason = routed.mode, "auto", f"auto: {routed.reason}"
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
