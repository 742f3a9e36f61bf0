"""One turn's way through the gateway: check the model, replay or prepare, admit and reserve, load the
images, run on the engine, settle. Protocol-neutral: a front door builds the `Turn`, reads the
normalised chunks (`chunks()`), and turns them, the counts and the outcome into its wire format.

Every turn that gets past the model check ends in exactly one usage record: refused ones as
`rejected`, the rest settled by `finish`, which runs whatever happens to the client.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from app.auth.principal import Principal
from app.core.errors import APIError, IdempotencyConflict, InvalidRequest, RateLimited, UpstreamError
from app.engine.sse import EngineFailure
from app.metering.ledger import OpenRequest, Outcome
from app.metering.prices import TokenCounts, billed_prices, cost_micros, worst_case_micros
from app.pipeline.escalate import EscalatingRun, escalation_threshold
from app.pipeline.gateway import Gateway
from app.pipeline.modes import ModeDecision, split_model_suffix
from app.pipeline.prepare import (
    MAX_TOKENS_NOTICE,
    TOOLS_TOO_LONG,
    PreparedChat,
    load_images,
    new_request_id,
    prepare_chat,
    tools_droppable,
    without_tools,
)
from app.pipeline.run import ChatRun, Chunk
from app.pipeline.token_count import prepared_prompt_tokens
from app.pipeline.turn import Turn

log = logging.getLogger("thinkgate")


class Completion:
    """`await start()` (a stored response to replay, or None), then read `chunks()`, then `finish()`."""

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        turn: Turn,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        keep_text: bool = False,
        counts_per_chunk: bool = False,
        api: str = "chat",
    ) -> None:
        self.gateway = gateway
        self.api = api  # the door: "chat", "responses", "messages" (the ledger's `api` column)
        self.principal = principal
        self.turn = turn
        self.idempotency_key = idempotency_key
        self.fingerprint = fingerprint  # what the Idempotency-Key is bound to (the door's hash)
        self.keep_text = keep_text or idempotency_key is not None  # a replay needs the whole answer
        self.counts_per_chunk = counts_per_chunk
        self.request_id = new_request_id()
        self.model = turn.model  # the served model id once `start` has checked it
        self.prepared: PreparedChat | None = None
        self.handle: OpenRequest | None = None
        self.run: ChatRun | EscalatingRun | None = None
        self.status = "engine_error"
        self.error: str | None = None
        self.failure: APIError | None = None  # why the engine broke off, in the client's words
        # The response an Idempotency-Key retry gets, built by the door when the turn completed.
        self.stored_response: Callable[[], str] | None = None
        self._last_checkpoint = time.monotonic()
        self._background: set[asyncio.Task[None]] = set()
        self._settling: asyncio.Task[None] | None = None

    # -- before the engine ----------------------------------------------------------------------

    async def start(self) -> dict[str, Any] | None:
        """Everything up to the engine's first byte; a stored response when this is a retry of a
        finished request with the same Idempotency-Key. Refusals are raised as APIErrors."""
        gateway = self.gateway
        # A model no engine serves is refused before anything is recorded or counted: metric labels
        # and ledger rows are made of served model ids only, never of a client's string.
        self.model = split_model_suffix(self.turn.model)[0]
        gateway.pool.check_model(self.model)
        metering = gateway.settings.metering
        if self.idempotency_key and self.fingerprint and metering:
            try:
                replay = await gateway.ledger.replay(self.principal, self.idempotency_key, self.fingerprint)
            except APIError as error:
                await self._reject(error)
                raise
            if replay is not None:
                return replay
        try:
            prepared = prepare_chat(
                self.turn, self.principal, gateway.profiles, gateway.media, self.request_id
            )
            prepared = self.prepared = await self._fit_output(prepared)
        except APIError as error:
            await self._reject(error)
            raise
        gateway.metrics.mode_decisions.labels(prepared.decision.mode, prepared.decision.source).inc()
        await self._reserve(prepared)
        # Images are checked and decoded only now: the cheap checks, the rate limits and the budget
        # come first, so a key that may not spend cannot make the gateway spend CPU either.
        try:
            await load_images(prepared, gateway.media, gateway.client)
        except APIError as error:
            await self._refuse_admitted(error)
            raise
        await self._connect(prepared)
        return None

    @property
    def notices(self) -> dict[str, str]:
        """Response headers for the door to copy (`x-thinkgate-tools`, `x-thinkgate-max-tokens`)."""
        return self.prepared.notices if self.prepared is not None else {}

    async def _fit_output(self, prepared: PreparedChat) -> PreparedChat:
        """An output bound larger than what the model's context leaves is fitted to it, not refused.
        The prompt bound is an upper bound: only when it says the bound might not fit is the prompt
        counted exactly (the engine's /tokenize; with images still unloaded, the bound is used).
        Offered tools whose schemas leave less than a quarter of the context to answer in (Open
        WebUI's 36 built-in tools on a small model) are dropped, unless the client insists on a call."""
        context = self.gateway.pool.max_model_len.get(prepared.model)
        wanted = int(prepared.body["max_tokens"])
        if context is None or prepared.prompt_bound + wanted <= context:
            return prepared
        prompt = await self._exact_prompt(prepared)
        exact = prompt is not None
        fitted = context - (prompt if prompt is not None else prepared.prompt_bound)
        if fitted >= wanted:
            return prepared
        if exact and fitted < min(wanted, context // 4) and tools_droppable(prepared.body):
            return await self._fit_output(without_tools(prepared, TOOLS_TOO_LONG))
        if fitted < 1:
            if exact:
                raise InvalidRequest(
                    f"The prompt ({prompt} tokens) fills the model's context ({context} tokens); "
                    "shorten the messages",
                    param="messages",
                )
            fitted = 1
        body = {**prepared.body, "max_tokens": fitted}
        notices = {**prepared.notices, MAX_TOKENS_NOTICE: f"fitted to {fitted}"}
        return replace(prepared, body=body, output_bound=fitted * self.turn.n, notices=notices)

    async def _exact_prompt(self, prepared: PreparedChat) -> int | None:
        """The prompt's tokens by the engine's /tokenize; None with images not loaded yet, or when
        the engine cannot count (an engine without /tokenize: the bound is used)."""
        if prepared.images:
            return None
        try:
            return await prepared_prompt_tokens(self.gateway, prepared)
        except APIError as error:
            log.info("request %s: no exact prompt count (%s); fitting to the bound", self.request_id, error)
            return None

    async def _reserve(self, prepared: PreparedChat) -> None:
        """Count the rate limits and reserve the worst case, in one ledger transaction."""
        gateway, decision = self.gateway, prepared.decision
        if not gateway.settings.metering:
            return
        prices = billed_prices(prepared.profile, decision.mode)
        # Auto mode's escalation may run the prompt twice (pipeline/escalate.py).
        attempts = 1 if escalation_threshold(prepared, self.principal) is None else 2
        try:
            self.handle = await gateway.ledger.open(
                self.principal,
                request_id=prepared.request_id,
                model=prepared.model,
                mode=decision.mode,
                mode_source=decision.source,
                effort=decision.effort,
                reserve_micros=worst_case_micros(
                    prices, prepared.prompt_bound * attempts, prepared.output_bound
                ),
                api=self.api,
                idempotency_key=self.idempotency_key,
                request_hash=self.fingerprint if self.idempotency_key else None,
                limiter=gateway.limiter,
                rate_tokens=prepared.prompt_bound + prepared.output_bound,
            )
        except APIError as error:
            if isinstance(error, IdempotencyConflict | RateLimited):
                await self._reject(error, decision.mode)  # budget refusals are recorded by `open` itself
            else:
                gateway.metrics.requests.labels(prepared.model, decision.mode, "rejected").inc()
            raise

    async def _connect(self, prepared: PreparedChat) -> None:
        gateway = self.gateway
        new_run = functools.partial(
            ChatRun,
            pool=gateway.pool,
            client=gateway.client,
            direct=gateway.engine_transport,
            affinity=affinity(self.principal, self.turn) if gateway.settings.affinity else None,
            keep_text=self.keep_text,
            counts_per_chunk=self.counts_per_chunk,
        )
        threshold = escalation_threshold(prepared, self.principal)
        self.run = new_run(prepared) if threshold is None else EscalatingRun(prepared, threshold, new_run)
        gateway.metrics.in_flight.inc()
        try:
            await self.run.start()
        except BaseException as error:
            self.status = "rejected" if isinstance(error, APIError) and error.status < 500 else "engine_error"
            self.error = str(error)[:500]
            await self.finish(disconnected=False)
            raise

    async def _reject(self, error: APIError, mode: str = "-") -> None:
        if self.gateway.settings.metering:
            await self.gateway.ledger.reject(
                self.principal,
                request_id=self.request_id,
                model=self.model,
                mode=mode,
                reason=_reason(error),
                api=self.api,
            )
        self.gateway.metrics.requests.labels(self.model, mode, "rejected").inc()

    async def _refuse_admitted(self, error: APIError) -> None:
        """Close the reservation of a turn refused after admission (a bad image): `rejected`, free."""
        assert self.prepared is not None
        if self.handle is not None:
            outcome = Outcome(status="rejected", counts=TokenCounts(), cost_micros=0, error=_reason(error))
            await self.gateway.ledger.settle(self.handle, outcome, limiter=self.gateway.limiter)
        self.gateway.metrics.requests.labels(self.model, self.prepared.decision.mode, "rejected").inc()

    # -- on the engine --------------------------------------------------------------------------

    @property
    def decision(self) -> ModeDecision:
        """The mode the answer is given in, and why (what the doors report)."""
        assert self.prepared is not None
        if isinstance(self.run, EscalatingRun):
            return self.run.decision  # auto mode's escalation: the short answer or the long one
        return self.prepared.decision

    @property
    def counts(self) -> TokenCounts:
        assert self.run is not None
        return self.run.counts

    def cost(self, counts: TokenCounts | None = None) -> int:
        """Micro-USD for the run so far, or for `counts`; what the engine did, even past the reservation,
        at the prices of the mode that answers (auto mode's escalation: short or long)."""
        assert self.prepared is not None and self.run is not None
        prices = billed_prices(self.prepared.profile, self.decision.mode)
        return cost_micros(prices, self.run.counts if counts is None else counts)

    async def chunks(self) -> AsyncIterator[list[Chunk]]:
        """The engine's normalised chunks, a batch per read. When the engine breaks off, the batches
        end and `failure` says why in the client's words (the engine's own stay in the log)."""
        assert self.run is not None
        try:
            async for batch in self.run.chunks():
                yield batch
                self._maybe_checkpoint()
            self.status = "length" if self.run.finish_reason() == "length" else "completed"
        except (EngineFailure, APIError) as error:
            self.status = "engine_error"
            if isinstance(error, APIError):
                self.failure = error
            else:
                log.warning("request %s: %s", self.request_id, error)
                self.failure = UpstreamError("The engine failed mid-stream; retry the request.")
            self.error = self.failure.message[:500]

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        interval = self.gateway.settings.checkpoint_interval_s
        if now - self._last_checkpoint < interval or self.handle is None or self.run is None:
            return
        self._last_checkpoint = now
        task = asyncio.create_task(self.gateway.ledger.checkpoint(self.handle, self.run.counts))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the end, whatever happened ---------------------------------------------------------------

    async def finish(self, disconnected: bool) -> None:
        """Settle the turn exactly once, whoever comes first: the end of the work or the response.

        Settling runs as a task of its own: a caller cancelled meanwhile (the client left while the
        stream was settling) cannot interrupt it half-way, and the second caller waits for it.
        """
        if self._settling is None:
            self._settling = asyncio.ensure_future(self._settle(disconnected))
        await asyncio.shield(self._settling)

    async def _settle(self, disconnected: bool) -> None:
        assert self.prepared is not None and self.run is not None
        gateway, run, decision = self.gateway, self.run, self.decision
        await run.close()
        for task in list(self._background):
            task.cancel()
        if disconnected and self.status not in ("completed", "length"):
            self.status, self.error = "aborted", "client disconnected"
        counts = run.counts
        cost = self.cost()
        if self.handle is not None:
            stored = None
            if self.idempotency_key and self.stored_response and self.status in ("completed", "length"):
                stored = self.stored_response()
            outcome = Outcome(
                status=self.status,
                counts=counts,
                cost_micros=cost,
                finish_reason=run.finish_reason(),
                error=self.error,
                ttft_ms=run.ttft_ms,
                mode=decision.mode,  # the answering one (auto mode's escalation may differ from the open's)
            )
            await gateway.ledger.settle(self.handle, outcome, response_json=stored, limiter=gateway.limiter)
        gateway.metrics.in_flight.dec()
        gateway.metrics.settled(self.prepared.model, decision.mode, self.status, counts, cost, run.ttft_ms)


def affinity(principal: Principal, turn: Turn) -> str:
    """Same key and same opening of the conversation → same replica (its prefix cache).

    The opening is everything up to the first user message: every later turn repeats it, so the
    first turn and the follow-ups hash alike (a fixed count of messages would not: the first turn
    has no assistant message yet)."""
    head = [principal.key_id]
    for message in turn.messages:
        head.append(f"{message.role}:{message.content!r}")
        if message.role == "user":
            break
    return hashlib.blake2b("|".join(head).encode(), digest_size=8).hexdigest()


def _reason(error: APIError) -> str:
    return f"{error.code or error.type}: {error.message}"[:500]
