"""Model profiles: how one model family turns a reasoning mode into upstream parameters.

A profile is a TOML file in `models/profiles/`. It says which served model ids it covers (globs),
how thinking is switched on and off upstream, the reasoning delimiters, default thinking budgets per
effort, context length, vision support (and the layout its images are redrawn in, a step registered by
name: app/profiles/steps.py), prices per mode and the embedded engine's flags; how its family wants
past reasoning replayed in multi-turn and tool loops (`[thinking] keep_reasoning`, `reasoning_field`)
and whether its engine runs tools, with which tool-call parser (`[tools] parser`, `enabled`).
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.profiles.steps import AS_IS, image_layouts

Mode = Literal["long", "short"]
EFFORTS = ("low", "medium", "high", "xhigh", "max")
PRICE_KINDS = ("input", "cached_input", "image_input", "reasoning_output", "answer_output")
DEFAULT_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
# The efforts above high default to this many times high's budget.
UPPER_EFFORTS = {"xhigh": 2, "max": 4}
KeepReasoning = Literal["never", "tool_loops", "always"]
KEEP_REASONING = ("never", "tool_loops", "always")
REASONING_FIELDS = ("reasoning_content", "reasoning")


class ProfileError(Exception):
    """A profile file is missing a field or has a wrong value."""


@dataclass(frozen=True, slots=True)
class Prices:
    """Micro-USD per one million tokens of each kind."""

    input: int = 0
    cached_input: int = 0
    image_input: int = 0
    reasoning_output: int = 0
    answer_output: int = 0

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> Prices:
        unknown = set(table) - set(PRICE_KINDS)
        if unknown:
            raise ProfileError(f"{where}: unknown price kinds {sorted(unknown)}")
        values = {}
        for kind, value in table.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProfileError(
                    f"{where}.{kind}: prices are non-negative integers (micro-USD per 1M tokens)"
                )
            values[kind] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    match: tuple[str, ...]
    reasoning: bool = True
    always_thinks: bool = False
    vision: bool = False
    context_length: int = 8192
    default_max_tokens: int = 4096
    max_image_side: int = 1024
    image_layout: str = AS_IS  # a registered image step (steps.py), e.g. the bundled model's "glyph-grid"
    tokens_per_image: int = 2048  # upper bound of prompt tokens one image becomes
    image_alone: Mode = "short"  # the auto router's mode for an image sent without a word
    # `[router] escalate_below`: the auto router's long decisions are answered short first, and long
    # only when the short answer's lowest token log-probability is below this (pipeline/escalate.py).
    escalate_below: float | None = None
    checkpoint: str | None = None
    think_start: str = "<think>"
    think_end: str = "</think>"
    engine_budget: bool = False
    budgets: Mapping[str, int] = field(default_factory=lambda: _with_upper(DEFAULT_BUDGETS))
    # Past reasoning sent back to the engine: never; tool_loops (only the assistant messages after the
    # last user message: the current tool loop); always. In `reasoning_field` of the message.
    keep_reasoning: KeepReasoning = "never"
    reasoning_field: str = "reasoning_content"
    tools: bool = True  # False: the engine cannot run tools; offered tools are dropped
    tool_parser: str | None = None  # vLLM's --tool-call-parser for the embedded engine
    thinking_on: Mapping[str, Any] = field(default_factory=dict)
    thinking_off: Mapping[str, Any] = field(default_factory=dict)
    prices: Mapping[Mode, Prices] = field(default_factory=lambda: {"long": Prices(), "short": Prices()})
    engine_args: tuple[str, ...] = ()
    source: Path | None = None

    def engine_flags(self) -> tuple[str, ...]:
        """The embedded engine's flags: the profile's own, then tools and cached-token counts."""
        tools = (
            ("--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser) if self.tool_parser else ()
        )
        return (*self.engine_args, *tools, "--enable-prompt-tokens-details")

    def matches(self, model_id: str) -> bool:
        return any(fnmatch.fnmatchcase(model_id, pattern) for pattern in self.match)

    def budget_for(self, effort: str) -> int:
        return self.budgets[effort]

    def upstream_switch(self, mode: Mode) -> Mapping[str, Any]:
        """Body fields that put the engine's chat template in this mode."""
        return self.thinking_on if mode == "long" else self.thinking_off


def _switch_tables(thinking: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    switch = thinking.get("switch")
    on = dict(thinking.get("on", {}))
    off = dict(thinking.get("off", {}))
    if switch is not None:
        if on or off:
            raise ProfileError(f"{where}: give either thinking.switch or thinking.on/off, not both")
        on = {"chat_template_kwargs": {str(switch): True}}
        off = {"chat_template_kwargs": {str(switch): False}}
    return on, off


def _with_upper(budgets: Mapping[str, int]) -> dict[str, int]:
    """`budgets` with the efforts above high that it does not name: multiples of high's."""
    return {**{e: budgets["high"] * k for e, k in UPPER_EFFORTS.items()}, **budgets}


def _choice(value: object, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ProfileError(f"{where} is one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _tools(data: Mapping[str, Any], where: str) -> tuple[bool, str | None]:
    """`[tools]`: enabled (default true) and the engine's tool-call parser."""
    table = data.get("tools", {})
    unknown = set(table) - {"enabled", "parser"}
    if unknown:
        raise ProfileError(f"{where}: unknown tools fields {sorted(unknown)}")
    enabled = table.get("enabled", True)
    parser = table.get("parser")
    if not isinstance(enabled, bool) or (parser is not None and not isinstance(parser, str)):
        raise ProfileError(f"{where}: tools.enabled is true or false, tools.parser a parser name")
    return enabled, parser if enabled else None


def _mode(value: object, where: str) -> Mode:
    if value not in ("long", "short"):
        raise ProfileError(f"{where} is long or short, not {value!r}")
    return value


def _escalate_below(data: Mapping[str, Any], where: str) -> float | None:
    """`[router] escalate_below`: a log-probability (at most 0), or absent."""
    table = data.get("router", {})
    if not isinstance(table, dict) or set(table) - {"escalate_below"}:
        raise ProfileError(f"{where}: [router] takes only escalate_below")
    value = table.get("escalate_below")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value <= 0:
        raise ProfileError(f"{where}: router.escalate_below is a log-probability (a number <= 0)")
    return float(value)


def _image_layout(value: object, where: str) -> str:
    known = image_layouts()
    if not isinstance(value, str) or value not in known:
        raise ProfileError(f"{where}: image_layout is one of {', '.join(known)}, not {value!r}")
    return value


def parse_profile(data: Mapping[str, Any], source: Path | None = None) -> ModelProfile:
    where = str(source) if source else "profile"
    try:
        name = str(data["name"])
        match = tuple(str(p) for p in data.get("match", [name]))
    except KeyError as missing:
        raise ProfileError(f"{where}: missing {missing}") from None
    thinking = data.get("thinking", {})
    on, off = _switch_tables(thinking, where)
    budgets = _with_upper({**DEFAULT_BUDGETS, **thinking.get("budgets", {})})
    if set(budgets) != set(EFFORTS) or not all(isinstance(v, int) and v > 0 for v in budgets.values()):
        raise ProfileError(f"{where}: thinking.budgets needs positive integers for {EFFORTS}")
    tools_enabled, tool_parser = _tools(data, where)
    price_tables = data.get("prices", {})
    prices = {
        mode: Prices.from_table(price_tables.get(mode, {}), f"{where}: prices.{mode}")
        for mode in ("long", "short")
    }
    profile = ModelProfile(
        name=name,
        match=match,
        reasoning=bool(data.get("reasoning", True)),
        always_thinks=bool(data.get("always_thinks", False)),
        vision=bool(data.get("vision", False)),
        context_length=int(data.get("context_length", 8192)),
        default_max_tokens=int(data.get("default_max_tokens", 4096)),
        max_image_side=int(data.get("max_image_side", 1024)),
        image_layout=_image_layout(data.get("image_layout", AS_IS), where),
        tokens_per_image=int(data.get("tokens_per_image", 2048)),
        image_alone=_mode(data.get("image_alone", "short"), f"{where}: image_alone"),
        escalate_below=_escalate_below(data, where),
        checkpoint=data.get("checkpoint"),
        think_start=str(thinking.get("start", "<think>")),
        think_end=str(thinking.get("end", "</think>")),
        engine_budget=bool(thinking.get("engine_budget", False)),
        budgets=budgets,
        keep_reasoning=_choice(  # type: ignore[arg-type]
            thinking.get("keep_reasoning", "never"), KEEP_REASONING, f"{where}: thinking.keep_reasoning"
        ),
        reasoning_field=_choice(
            thinking.get("reasoning_field", "reasoning_content"),
            REASONING_FIELDS,
            f"{where}: thinking.reasoning_field",
        ),
        tools=tools_enabled,
        tool_parser=tool_parser,
        thinking_on=on,
        thinking_off=off,
        prices=prices,  # type: ignore[arg-type]
        engine_args=tuple(str(a) for a in data.get("engine", {}).get("args", [])),
        source=source,
    )
    if profile.default_max_tokens <= 0 or profile.context_length <= 0:
        raise ProfileError(f"{where}: context_length and default_max_tokens must be positive")
    return profile


def load_profile(path: Path) -> ModelProfile:
    with path.open("rb") as handle:
        try:
            data = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: {exc}") from None
    return parse_profile(data, path)


PLAIN = ModelProfile(name="plain", match=("*",), reasoning=False)


class ProfileRegistry:
    """All known profiles; resolves a served model id to its profile (first match wins)."""

    def __init__(self, profiles: Iterable[ModelProfile]) -> None:
        self.profiles = list(profiles)
        self._cache: dict[str, ModelProfile] = {}

    @classmethod
    def from_dir(cls, directory: Path) -> ProfileRegistry:
        profiles = [load_profile(path) for path in sorted(directory.glob("*.toml"))]
        # Catch-all profiles (match "*") go last so that specific families win.
        return cls(sorted(profiles, key=lambda p: "*" in p.match))

    def by_name(self, name: str) -> ModelProfile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise ProfileError(f"no profile named {name!r} (known: {[p.name for p in self.profiles]})")

    def for_model(self, model_id: str) -> ModelProfile:
        cached = self._cache.get(model_id)
        if cached is None:
            cached = next((p for p in self.profiles if p.matches(model_id)), PLAIN)
            self._cache[model_id] = cached
        return cached
