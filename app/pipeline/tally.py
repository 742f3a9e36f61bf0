"""Counting the engine's tokens exactly, from its continuous usage, as reasoning or answer.

The engine is always asked for continuous usage: every chunk carries the running counts, so the
counts are exact at any moment, whenever the client leaves. Only the last count of each run of
same-choice, same-phase chunks needs counting (the counts are cumulative), so a usage is held and
counted when the choice or phase changes or when the counts are read, not on every chunk.
"""

from __future__ import annotations

import logging
from typing import Any

from app.metering.prices import TokenCounts

log = logging.getLogger("thinkgate")

MAX_TOKEN_COUNT = 2**31 - 1  # the ledger's token columns (32-bit on PostgreSQL)


class Tally:
    """The token counts of one request, across the engine streams it takes (a thinking-budget
    continuation is a second stream: its counters start from zero, its prompt is not the client's).
    `carried`: the counts of an earlier attempt of the same request (auto mode's short answer, when
    it was escalated), included in `counts`."""

    __slots__ = (
        "answer_tokens",
        "cached_tokens",
        "carried",
        "count_prompt",
        "engine_reasoning",
        "held",
        "prompt_tokens",
        "reasoning_tokens",
        "seen",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.count_prompt = True  # False on a continuation: its prompt is ours, not the client's
        # The engine's counts are per choice: with continuous usage, vLLM reports each chunk's
        # `completion_tokens` (and reasoning tokens) for that chunk's choice alone; only the final
        # usage chunk, which has no choice, sums them. Keyed by choice index; None: that final sum.
        self.seen: dict[int | None, int] = {}
        self.engine_reasoning: dict[int | None, int] = {}
        # The latest cumulative usage not yet counted, its choice, and whether its tokens were reasoning.
        self.held: tuple[dict[str, Any], int | None, bool] | None = None
        self.carried = TokenCounts()

    def hold(self, usage: dict[str, Any], index: int | None, phase_is_reasoning: bool) -> None:
        """Keep the engine's cumulative usage of a chunk of choice `index` (None: the final sum)."""
        held = self.held
        if held is not None and (held[1] != index or held[2] != phase_is_reasoning):
            self._count(*held)
        self.held = (usage, index, phase_is_reasoning)

    def flush(self) -> None:
        """Count the usage held back, before the counters are read."""
        if self.held is not None:
            held, self.held = self.held, None
            self._count(*held)

    def generated(self) -> int:
        """Tokens generated in the current engine stream, over all choices."""
        self.flush()
        return sum(self.seen.values())

    def new_stream(self) -> None:
        """A continuation starts: its counters start from zero, and its prompt is not billed."""
        self.flush()
        self.seen = {}
        self.count_prompt = False

    def counts(self, image_bound: int, *, engine_split: bool) -> TokenCounts:
        """The counts so far. `engine_split`: take the reasoning/answer split from the engine's own
        reasoning count when it gave one (not after a forced end of thinking, which it cannot see)."""
        self.flush()
        reasoning, answer = self.reasoning_tokens, self.answer_tokens
        if self.engine_reasoning and engine_split:
            total = reasoning + answer
            reasoning = min(sum(self.engine_reasoning.values()), total)
            answer = total - reasoning
        carried = self.carried
        return TokenCounts(
            prompt=carried.prompt + self.prompt_tokens,
            image=carried.image + min(self.prompt_tokens, image_bound),
            cached=carried.cached + self.cached_tokens,
            reasoning=carried.reasoning + reasoning,
            answer=carried.answer + answer,
        )

    def _count(self, usage: dict[str, Any], index: int | None, phase_is_reasoning: bool) -> None:
        """Count what one usage object adds: for a choice, its own cumulative count against what was
        seen of that choice; for the final sum (`index` None), whatever the choices' counts missed."""
        if self.count_prompt:
            self.prompt_tokens = max(self.prompt_tokens, _count(usage, "prompt_tokens"))
            details = usage.get("prompt_tokens_details") or {}
            self.cached_tokens = max(self.cached_tokens, _count(details, "cached_tokens"))
        completion = _count(usage, "completion_tokens")
        seen = self.seen
        new = completion - (sum(seen.values()) if index is None else seen.get(index, 0))
        if new > 0:
            seen[index] = seen.get(index, 0) + new
            if phase_is_reasoning:
                self.reasoning_tokens += new
            else:
                self.answer_tokens += new
        completion_details = usage.get("completion_tokens_details") or {}
        if isinstance(completion_details, dict) and "reasoning_tokens" in completion_details:
            reasoning = _count(completion_details, "reasoning_tokens")
            engine = self.engine_reasoning
            if index is None:
                engine[None] = engine.get(None, 0) + max(0, reasoning - sum(engine.values()))
            else:
                engine[index] = reasoning


def _count(usage: dict[str, Any], name: str) -> int:
    """A token count from the engine's usage, as an integer the ledger can store. Counting happens
    whenever the counters are read (settlement included), so a broken engine's value is clamped
    and logged here rather than raised."""
    value = usage.get(name) or 0
    if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    log.warning("engine sent an invalid usage.%s: %.40r", name, value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return int(min(max(value, 0), MAX_TOKEN_COUNT))
    return 0
