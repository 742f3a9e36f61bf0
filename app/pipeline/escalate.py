"""Auto mode's escalation: answer short first, and run long only when the short answer is unsure.

When the auto router sends a turn to long-CoT (`modes.resolve_mode` sets `escalate_below` when the
model's profile has `[router] escalate_below`, the turn has one choice and offers no tools), the
gateway first asks the engine for a short-CoT answer with its token log-probabilities, and buffers it
(nothing reaches the client yet). Its confidence is the lowest log-probability of the answer's tokens
(`confidence`): one digit the model was unsure of is enough to make a sum wrong, and the lowest token
separates right from wrong short answers better than their mean on the bundled model
(docs/router.md). At or above the profile's threshold, the short answer is returned as it came; below
it, or when the engine sent no log-probabilities, the same turn is run in long mode and that answer
is streamed instead. Either way the response's mode and reason say what happened
(`auto: arithmetic expression; escalated: short answer confidence -3.21 < -1`).

One request, one usage record: the long attempt's counts carry on from the short one's
(`Tally.carried`), so the record holds the prompt and output tokens of both attempts, and the output
of both stays within the request's `max_tokens` (the long attempt gets what the short one left). The
record was opened, and reserved for, as the router's long-mode request (the prompt twice, at long-mode
prices: the most the turn can cost), and is settled in the mode that answered, at its prices: a kept
short answer is a short-mode record, an escalated turn a long-mode one with both attempts' tokens.
Log-probabilities the client did not ask for are removed from the short answer before it is returned.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from app.auth.principal import Principal
from app.core.errors import APIError
from app.engine.sse import EngineFailure
from app.metering.prices import TokenCounts
from app.pipeline.modes import ModeDecision
from app.pipeline.prepare import PreparedChat
from app.pipeline.run import ChatRun, ChoiceState, Chunk

__all__ = ["EscalatingRun", "answer_logprobs", "confidence", "escalation_threshold"]


def escalation_threshold(prepared: PreparedChat, principal: Principal) -> float | None:
    """The confidence below which a short first attempt is escalated to long mode, or None when the
    turn is not answered short first (not auto mode's escalation, or the key may not use short mode)."""
    allowed = principal.allowed_modes
    if allowed is not None and "short" not in allowed:
        return None
    return prepared.decision.escalate_below


def answer_logprobs(chunk: Chunk) -> list[float]:
    """The log-probabilities of the answer tokens one normalised chunk carries (none for reasoning)."""
    found: list[float] = []
    if not isinstance(chunk, dict):
        return found  # a byte-lane chunk: the engine sent no log-probabilities with it
    for choice in chunk.get("choices") or ():
        logprobs = choice.get("logprobs")
        if not (isinstance(logprobs, dict) and (choice.get("delta") or {}).get("content")):
            continue
        for token in logprobs.get("content") or ():
            value = token.get("logprob") if isinstance(token, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.append(float(value))
    return found


def confidence(logprobs: Sequence[float]) -> float | None:
    """A short answer's confidence: its least likely token's log-probability; None without tokens."""
    return min(logprobs) if logprobs else None


class EscalatingRun:
    """The short first attempt, and the long one when it is needed, as one run for the pipeline:
    `start()` runs the short attempt to its end and decides; `chunks()` then hands on the short
    answer, or streams the long one. `decision` says which mode answered, and why."""

    def __init__(
        self, prepared: PreparedChat, threshold: float, new_run: Callable[[PreparedChat], ChatRun]
    ) -> None:
        self.prepared = prepared  # the router's long-mode turn: the record, the prices, the bounds
        self.threshold = threshold
        self.new_run = new_run
        self.short = new_run(_short_attempt(prepared))
        self.answered_by = self.short
        self.decision: ModeDecision = self.short.prepared.decision
        self.counts_per_chunk = self.short.counts_per_chunk
        self._buffered: list[list[Chunk]] = []
        self._failure: EngineFailure | APIError | None = None
        self._released: float | None = None  # when the buffered short answer was let go

    # -- what the pipeline and the doors read --------------------------------------------------

    @property
    def choices(self) -> dict[int, ChoiceState]:
        return self.answered_by.choices

    @property
    def created(self) -> int:
        return self.answered_by.created

    @property
    def counts(self) -> TokenCounts:
        return self.answered_by.counts  # the long attempt's carry the short one's

    @property
    def ttft_ms(self) -> float | None:
        if self.answered_by is not self.short:
            return self.answered_by.ttft_ms  # timed from the short attempt's start
        if self._released is None or self.short.first_token_at is None:
            return None
        return (self._released - self.short.started) * 1000

    def finish_reason(self) -> str | None:
        return self.answered_by.finish_reason()

    # -- the attempts ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the short attempt to its end (buffered), then keep it or open the long attempt."""
        await self.short.start()
        logprobs = await self._buffer_short()
        rule = self.prepared.decision.reason
        if self._failure is not None:  # what came is handed on, then the failure, as in any stream
            self._keep(f"{rule}; short first attempt (failed)")
            return
        score = confidence(logprobs)
        if score is not None and score >= self.threshold:
            self._keep(f"{rule}; short answer confident ({score:.2f} >= {self.threshold:g})")
            return
        left = int(self.prepared.body["max_tokens"]) - self.short.tally.generated()
        if left < 1:
            self._keep(f"{rule}; short answer kept (no tokens left for a long attempt)")
            return
        why = (
            "the short answer had no token log-probabilities"
            if score is None
            else f"short answer confidence {score:.2f} < {self.threshold:g}"
        )
        await self._escalate(f"{rule}; escalated: {why}", left)

    async def chunks(self) -> AsyncIterator[list[Chunk]]:
        if self.answered_by is not self.short:
            async for batch in self.answered_by.chunks():
                yield batch
            return
        for batch in self._buffered:
            yield batch
        if self._failure is not None:
            raise self._failure

    async def close(self) -> None:
        await self.short.close()
        if self.answered_by is not self.short:
            await self.answered_by.close()

    async def _buffer_short(self) -> list[float]:
        """Read the short attempt to its end; the answer's token log-probabilities."""
        logprobs: list[float] = []
        hide = not self.prepared.body.get("logprobs")  # the client did not ask for them
        try:
            async for batch in self.short.chunks():
                for chunk in batch:
                    logprobs += answer_logprobs(chunk)
                    if hide and isinstance(chunk, dict):
                        _drop_logprobs(chunk)
                self._buffered.append(batch)
        except (EngineFailure, APIError) as failure:
            self._failure = failure
        self._released = time.perf_counter()
        return logprobs

    def _keep(self, reason: str) -> None:
        self.decision = replace(self.decision, reason=reason)

    async def _escalate(self, reason: str, max_tokens: int) -> None:
        prepared = self.prepared
        long = self.new_run(
            replace(
                prepared,
                decision=replace(prepared.decision, reason=reason),
                body={**prepared.body, "max_tokens": max_tokens},
            )
        )
        long.tally.carried = self.short.counts
        long.started = self.short.started
        self.answered_by, self.decision = long, long.prepared.decision
        await long.start()


def _short_attempt(prepared: PreparedChat) -> PreparedChat:
    """The router's long-mode turn as a short-mode one that asks for its token log-probabilities."""
    profile = prepared.profile
    switch_on = profile.upstream_switch("long")
    body: dict[str, Any] = {
        key: value
        for key, value in prepared.body.items()
        if key not in switch_on and key != "thinking_token_budget"
    }
    body.update(profile.upstream_switch("short"))
    body["logprobs"] = True
    decision = replace(prepared.decision, mode="short", thinking_budget=None)
    return replace(prepared, body=body, decision=decision)


def _drop_logprobs(chunk: dict[str, Any]) -> None:
    for choice in chunk.get("choices") or ():
        if choice.get("logprobs") is not None:
            choice["logprobs"] = None
