"""`POST /v1/chat/completions`: prepare → admit → reserve → run on the engine → settle.

Every request that passes authentication and body validation ends in exactly one usage record:
refused ones as `rejected`, the rest settled by `finish`, which runs whatever happens to the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from app.api.deps import CurrentPrincipal, GatewayDep, get_principal
from app.api.responses import END, FLUSH, DeferredJSONResponse, SSEResponse
from app.auth.keys import Principal
from app.core.errors import APIError, IdempotencyConflict, InvalidRequest, RateLimited, UpstreamError
from app.engine.sse import DELTA_OPEN
from app.metering.ledger import OpenRequest, Outcome
from app.metering.prices import (
    TokenCounts,
    billed_prices,
    cost_micros,
    format_usd,
    to_usd,
    worst_case_micros,
)
from app.pipeline.gateway import Gateway
from app.pipeline.modes import split_model_suffix
from app.pipeline.prepare import PreparedChat, load_images, new_request_id, prepare_chat
from app.pipeline.run import ChatRun, Chunk, EngineFailure
from app.protocols.chat.types import ChatCompletionRequest

log = logging.getLogger("thinkgate")
MAX_IDEMPOTENCY_KEY = 200


class _ChatRoute(APIRoute):
    """The chat route without FastAPI's per-request machinery (dependency solving, its own body
    parsing), a measurable share of a request's latency on the hot path. The endpoint's signature
    below still documents the route in the OpenAPI schema; `handle` does the same work by hand:
    the same model and the same errors (pydantic's, raised as FastAPI's validation error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return handle


async def handle(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await get_principal(request, gateway)  # who is asking comes first: 401 before 400
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            f"The Idempotency-Key header is longer than {MAX_IDEMPOTENCY_KEY} characters.",
            param="Idempotency-Key",
        )
    response: Response = await Completion(gateway, principal, body, idempotency_key).respond()
    return response


router = APIRouter(route_class=_ChatRoute)
PATH = "/v1/chat/completions"

ERROR_SCHEMA = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": ERROR_SCHEMA}
    for status, text in [
        (400, "Invalid request (the field is named in error.param)"),
        (401, "Missing or wrong API key"),
        (403, "The key may not use this mode or effort"),
        (404, "Unknown model"),
        (409, "This Idempotency-Key is still running, or was used with another request"),
        (413, "Body or image too large"),
        (429, "Budget exhausted (insufficient_quota) or rate limit (rate_limit_exceeded)"),
        (502, "The engine failed"),
        (503, "No engine available (see Retry-After)"),
        (504, "The engine did not answer in time (see Retry-After)"),
    ]
}  # fmt: skip


@router.post(
    PATH,
    response_model=None,
    responses={
        200: {"description": "A chat.completion object, or an SSE stream of chat.completion.chunk"},
        **ERROR_RESPONSES,
    },
    summary="Create a chat completion (long-CoT or short-CoT)",
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> Any:
    """Documentation only: requests are served by `handle` (see `_ChatRoute` and api/app.py)."""
    raise AssertionError("served by handle")


def request_fingerprint(request: ChatCompletionRequest) -> str:
    """What an Idempotency-Key is bound to: the request's fields, whatever their order or spacing.
    How the answer is delivered (streamed or not) is left out: a retry may ask for the same
    completion either way, and is replayed in the form it asks for."""
    fields = request.model_dump(mode="json", exclude_unset=True, exclude={"stream", "stream_options"})
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _affinity(principal: Principal, request: ChatCompletionRequest) -> str:
    """Same key and same opening of the conversation → same replica (its prefix cache).

    The opening is everything up to the first user message: every later turn repeats it, so the
    first turn and the follow-ups hash alike (a fixed count of messages would not: the first turn
    has no assistant message yet)."""
    head = []
    for message in request.messages:
        head.append(message.model_dump_json(include={"role", "content"}))
        if message.role == "user":
            break
    return hashlib.blake2b("|".join([principal.key_id, *head]).encode(), digest_size=8).hexdigest()


class Completion:
    """One request's way through the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        request: ChatCompletionRequest,
        idempotency_key: str | None,
    ) -> None:
        self.gateway = gateway
        self.principal = principal
        self.request = request
        self.idempotency_key = idempotency_key
        self.request_id = new_request_id()
        self.model = request.model  # the served model id once `respond` has checked it
        self.prepared: PreparedChat | None = None
        self.handle: OpenRequest | None = None
        self.run: ChatRun | None = None
        self.status = "engine_error"
        self.error: str | None = None
        self._last_checkpoint = time.monotonic()
        self._background: set[asyncio.Task[None]] = set()
        self._settling: asyncio.Task[None] | None = None

    async def _reject(self, error: APIError, mode: str = "-") -> None:
        if self.gateway.settings.metering:
            await self.gateway.ledger.reject(
                self.principal,
                request_id=self.request_id,
                model=self.model,
                mode=mode,
                reason=f"{error.code or error.type}: {error.message}"[:500],
            )
        self.gateway.metrics.requests.labels(self.model, mode, "rejected").inc()

    async def respond(self) -> Any:
        gateway = self.gateway
        metering = gateway.settings.metering
        # A model no engine serves is refused before anything is recorded or counted: metric labels
        # and ledger rows are made of served model ids only, never of a client's string.
        self.model, _ = split_model_suffix(self.request.model)
        gateway.pool.check_model(self.model)
        fingerprint = request_fingerprint(self.request) if self.idempotency_key else None
        if self.idempotency_key and fingerprint and metering:
            try:
                replay = await gateway.ledger.replay(self.principal, self.idempotency_key, fingerprint)
            except APIError as error:
                await self._reject(error)
                raise
            if replay is not None:
                return _replay_response(replay, self.request.stream)
        try:
            prepared = self.prepared = prepare_chat(
                self.request, self.principal, gateway.profiles, gateway.media
            )
        except APIError as error:
            await self._reject(error)
            raise
        decision = prepared.decision
        token_bound = prepared.prompt_bound + prepared.output_bound
        gateway.metrics.mode_decisions.labels(decision.mode, decision.source).inc()
        prices = billed_prices(prepared.profile, decision.mode)
        try:
            self.handle = (
                None
                if not metering
                else await gateway.ledger.open(
                    self.principal,
                    request_id=prepared.request_id,
                    model=prepared.model,
                    mode=decision.mode,
                    mode_source=decision.source,
                    effort=decision.effort,
                    reserve_micros=worst_case_micros(prices, prepared.prompt_bound, prepared.output_bound),
                    idempotency_key=self.idempotency_key,
                    request_hash=fingerprint,
                    limiter=gateway.limiter,
                    rate_tokens=token_bound,
                )
            )
        except APIError as error:
            if isinstance(error, IdempotencyConflict | RateLimited):
                await self._reject(error, decision.mode)  # budget refusals are recorded by `open` itself
            else:
                gateway.metrics.requests.labels(prepared.model, decision.mode, "rejected").inc()
            raise
        self.request_id = prepared.request_id
        # Images are checked and decoded only now: the cheap checks, the rate limits and the budget
        # come first, so a key that may not spend cannot make the gateway spend CPU either.
        try:
            await load_images(prepared, gateway.media, gateway.client)
        except APIError as error:
            await self._refuse_admitted(error)
            raise
        keep_text = not self.request.stream or self.idempotency_key is not None
        options = self.request.stream_options
        self.run = ChatRun(
            prepared,
            gateway.pool,
            gateway.client,
            direct=gateway.engine_transport,
            affinity=_affinity(self.principal, self.request) if gateway.settings.affinity else None,
            keep_text=keep_text,
            counts_per_chunk=bool(self.request.stream and options and options.continuous_usage_stats),
        )
        gateway.metrics.in_flight.inc()
        try:
            await self.run.start()
        except BaseException as error:
            self.status = "rejected" if isinstance(error, APIError) and error.status < 500 else "engine_error"
            self.error = str(error)[:500]
            await self.finish(disconnected=False)
            raise
        headers = {
            "x-request-id": self.request_id,
            "x-reasoning-mode": decision.mode,
            "x-reasoning-mode-reason": decision.reason,
        }
        if self.request.stream:
            return SSEResponse(self.frames(), self.finish, headers)
        return DeferredJSONResponse(self.complete, self.finish)

    async def _refuse_admitted(self, error: APIError) -> None:
        """Close the reservation of a request refused after admission (a bad image): `rejected`, free."""
        assert self.prepared is not None
        mode = self.prepared.decision.mode
        if self.handle is not None:
            outcome = Outcome(
                status="rejected",
                counts=TokenCounts(),
                cost_micros=0,
                error=f"{error.code or error.type}: {error.message}"[:500],
            )
            await self.gateway.ledger.settle(self.handle, outcome, limiter=self.gateway.limiter)
        self.gateway.metrics.requests.labels(self.model, mode, "rejected").inc()

    # -- shared pieces ----------------------------------------------------------------------------

    def _cost(self, counts: TokenCounts | None = None) -> int:
        assert self.prepared is not None and self.run is not None
        prices = billed_prices(self.prepared.profile, self.prepared.decision.mode)
        return cost_micros(prices, self.run.counts if counts is None else counts)

    def _usage(self, counts: TokenCounts | None = None) -> dict[str, Any]:
        """The OpenAI usage object, for the run so far or for `counts` (a chunk's own)."""
        assert self.run is not None
        counts = self.run.counts if counts is None else counts
        return {
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.completion,
            "total_tokens": counts.prompt + counts.completion,
            "prompt_tokens_details": {"cached_tokens": counts.cached, "image_tokens": counts.image},
            "completion_tokens_details": {
                "reasoning_tokens": counts.reasoning,
                "answer_tokens": counts.answer,
            },
            "cost": to_usd(self._cost(counts)),
        }

    def _mode_fields(self) -> dict[str, str]:
        assert self.prepared is not None
        return {
            "reasoning_mode": self.prepared.decision.mode,
            "reasoning_mode_reason": self.prepared.decision.reason,
        }

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        interval = self.gateway.settings.checkpoint_interval_s
        if now - self._last_checkpoint < interval or self.handle is None or self.run is None:
            return
        self._last_checkpoint = now
        task = asyncio.create_task(self.gateway.ledger.checkpoint(self.handle, self.run.counts))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _engine_failed(self, error: EngineFailure | APIError) -> APIError:
        """The error a client sees when the engine broke off: what went wrong stays in the log (the
        engine's words may name its internals); the record and the client get our own words."""
        self.status = "engine_error"
        if isinstance(error, APIError):
            self.error = error.message[:500]
            return error
        log.warning("request %s: %s", self.request_id, error)
        failure = UpstreamError("The engine failed mid-stream; retry the request.")
        self.error = failure.message
        return failure

    def _final_status(self) -> str:
        assert self.run is not None
        return "length" if self.run.finish_reason() == "length" else "completed"

    # -- streaming --------------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[bytes]:
        assert self.run is not None and self.prepared is not None
        request = self.request
        options = request.stream_options
        include_usage = bool(options and options.include_usage)
        fixed = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.run.created,
            "model": request.model,
            **self._mode_fields(),
        }
        framer = ChunkFramer(
            fixed,
            hide_reasoning=not self.prepared.decision.include_reasoning,
            usage=self._usage if self.run.counts_per_chunk else None,
        )
        try:
            async for batch in self.run.chunks():
                events = framer.frames(batch)
                if events:
                    yield events
                self._maybe_checkpoint()
            self.status = self._final_status()
        except (EngineFailure, APIError) as error:
            failure = self._engine_failed(error)
            yield b"data: " + orjson.dumps(failure.body()) + b"\n\n"
        # Settle once the client has everything so far (one that left meanwhile is `aborted`), and
        # before the stream ends, so a client that saw [DONE] reads its usage already recorded.
        yield FLUSH
        await self.finish(disconnected=False)
        if include_usage:
            final = {
                **fixed,
                "object": "chat.completion.chunk",
                "created": self.run.created,
                "choices": [],
                "usage": self._usage(),
            }
            yield b"data: " + orjson.dumps(final) + b"\n\n"
        yield END

    # -- not streaming ----------------------------------------------------------------------------

    def _completion_body(self) -> dict[str, Any]:
        assert self.run is not None
        hide = self.prepared is not None and not self.prepared.decision.include_reasoning
        choices = []
        for index, state in sorted(self.run.choices.items()):
            reasoning = "".join(state.reasoning) or None
            message: dict[str, Any] = {"role": "assistant", "content": "".join(state.content) or None}
            if reasoning and not hide:
                message["reasoning_content"] = message["reasoning"] = reasoning
            if state.tool_calls:
                message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
            choices.append(
                {"index": index, "message": message, "finish_reason": state.finish_reason, "logprobs": None}
            )
        return {
            "id": self.request_id,
            "object": "chat.completion",
            "created": self.run.created,
            "model": self.request.model,
            "choices": choices,
            "usage": self._usage(),
            **self._mode_fields(),
        }

    async def complete(self) -> tuple[int, bytes, dict[str, str]]:
        assert self.run is not None and self.prepared is not None
        headers = {
            "x-request-id": self.request_id,
            "x-reasoning-mode": self.prepared.decision.mode,
            "x-reasoning-mode-reason": self.prepared.decision.reason,
        }
        try:
            async for _ in self.run.chunks():
                self._maybe_checkpoint()
            self.status = self._final_status()
        except (EngineFailure, APIError) as error:
            failure = self._engine_failed(error)
            await self.finish(disconnected=False)
            return failure.status, orjson.dumps(failure.body()), {**headers, **failure.headers}
        await self.finish(disconnected=False)  # settled before the client reads the response
        headers["x-usage-cost"] = format_usd(self._cost())
        return 200, orjson.dumps(self._completion_body()), headers

    # -- the end, whatever happened -----------------------------------------------------------------

    async def finish(self, disconnected: bool) -> None:
        """Settle the request exactly once, whoever comes first: the end of the work or the response.

        Settling runs as a task of its own: a caller cancelled meanwhile (the client left while the
        stream was settling) cannot interrupt it half-way, and the second caller waits for it.
        """
        if self._settling is None:
            self._settling = asyncio.ensure_future(self._settle(disconnected))
        await asyncio.shield(self._settling)

    async def _settle(self, disconnected: bool) -> None:
        assert self.prepared is not None and self.run is not None
        gateway, run, decision = self.gateway, self.run, self.prepared.decision
        await run.close()
        for task in list(self._background):
            task.cancel()
        if disconnected and self.status not in ("completed", "length"):
            self.status, self.error = "aborted", "client disconnected"
        counts = run.counts
        cost = self._cost()  # what the engine did, even past the reservation (see Ledger.settle)
        if self.handle is not None:
            stored = None
            if self.idempotency_key and self.status in ("completed", "length"):
                stored = orjson.dumps(self._completion_body()).decode()
            await gateway.ledger.settle(
                self.handle,
                Outcome(
                    status=self.status,
                    counts=counts,
                    cost_micros=cost,
                    finish_reason=run.finish_reason(),
                    error=self.error,
                    ttft_ms=run.ttft_ms,
                ),
                response_json=stored,
                limiter=gateway.limiter,
            )
        gateway.metrics.in_flight.dec()
        gateway.metrics.settled(self.prepared.model, decision.mode, self.status, counts, cost, run.ttft_ms)


class ChunkFramer:
    """The client's SSE frames for the relay's chunks: each carries the request's own id, created,
    model and mode; reasoning is left out when the request hides it; and `usage`, when given, turns
    each chunk's counts into its usage object (for clients that ask for usage on every chunk)."""

    def __init__(
        self,
        fixed: dict[str, Any],
        *,
        hide_reasoning: bool,
        usage: Callable[[TokenCounts], dict[str, Any]] | None,
    ) -> None:
        self.fixed = fixed
        self.hide_reasoning = hide_reasoning
        self.usage = usage
        # A Plain chunk is framed around the engine's text bytes: this head, the text, the rest of
        # its choice, the usage if any, the closing brace.
        self.head = b"data: " + orjson.dumps(fixed)[:-1] + DELTA_OPEN

    def frames(self, batch: list[Chunk]) -> bytes:
        """One batch's frames, joined (one write for all of them); empty if none is left to send."""
        events = []
        for chunk in batch:
            if isinstance(chunk, tuple):  # a Plain
                reasoning, text, after_delta, counts = chunk
                if reasoning:
                    if self.hide_reasoning:
                        continue
                    delta = b'"reasoning_content":' + text + b',"reasoning":' + text
                else:
                    delta = b'"content":' + text
                usage = b""
                if self.usage is not None:
                    assert counts is not None
                    usage = b',"usage":' + orjson.dumps(self.usage(counts))
                events.append(self.head + delta + b"}" + after_delta + usage + b"}\n\n")
                continue
            chunk.update(self.fixed)
            if self.hide_reasoning and not _strip_reasoning(chunk):
                continue
            if self.usage is not None:
                chunk["usage"] = self.usage(chunk["usage"])
            events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return events[0] if len(events) == 1 else b"".join(events)


def _strip_reasoning(chunk: dict[str, Any]) -> bool:
    """Remove reasoning from a chunk; False if nothing is left worth sending."""
    keep = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        delta.pop("reasoning", None)
        delta.pop("reasoning_content", None)
        keep = keep or bool(
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("role")
            or choice.get("finish_reason")
        )
    return keep


def _replay_response(stored: dict[str, Any], stream: bool) -> Any:
    """The completed response of an earlier request with the same Idempotency-Key, not billed again."""
    headers = {"idempotent-replayed": "true", "x-request-id": str(stored.get("id", ""))}
    if not stream:
        return Response(orjson.dumps(stored), media_type="application/json", headers=headers)

    async def frames() -> AsyncIterator[bytes]:
        fields = ("id", "created", "model", "reasoning_mode", "reasoning_mode_reason")
        base: dict[str, Any] = {k: stored[k] for k in fields if k in stored}
        for choice in stored.get("choices", []):
            message = choice.get("message", {})
            delta = {k: v for k, v in message.items() if v is not None}
            out = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": choice.get("index", 0),
                        "delta": delta,
                        "finish_reason": choice.get("finish_reason"),
                    }
                ],
            }
            yield b"data: " + orjson.dumps(out) + b"\n\n"
        yield (
            b"data: "
            + orjson.dumps(
                {**base, "object": "chat.completion.chunk", "choices": [], "usage": stored.get("usage")}
            )
            + b"\n\n"
        )
        yield END

    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
