"""One chat request against the engine: connect (with one retry), relay and normalise the stream,
count tokens exactly, force the end of thinking when the engine cannot, and report the outcome.

The engine is always asked to stream with continuous usage, whether or not the client streams, so
there is one code path, and token counts stay exact even when the client leaves mid-answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from app.core.errors import APIError, EngineUnavailable, GatewayTimeout, InvalidRequest, UpstreamError
from app.engine.pool import Replica, UpstreamPool
from app.engine.sse import match_text, sse_data, text_opening
from app.engine.transport import EngineTransport, serves
from app.metering.prices import TokenCounts
from app.pipeline.prepare import PreparedChat, continuation_body
from app.pipeline.reasoning import ThinkSplitter

log = logging.getLogger("thinkgate")

CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.PoolTimeout)
DRAIN_TIMEOUT_S = 1.0  # reading what follows [DONE]; an engine that lingers loses its connection
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,100}")
MAX_TOKEN_COUNT = 2**31 - 1  # the ledger's token columns (32-bit on PostgreSQL)

# A chunk whose delta is one piece of text, kept as the engine's bytes: the hot path (one per token),
# which the client side frames without parsing or serialising anything. In order: whether the text is
# reasoning; the text as a JSON string literal, quotes included, as the engine wrote it; the rest of
# its choice (see engine/sse.py); the counts as of this chunk when asked for
# (counts_per_chunk), else None. A bare tuple: building a NamedTuple was 4 % of the gateway's CPU.
Plain = tuple[bool, bytes, bytes, TokenCounts | None]
Chunk = dict[str, Any] | Plain


@dataclass(slots=True)
class ChoiceState:
    splitter: ThinkSplitter | None  # None: everything from here on is answer (a budget continuation)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    in_answer: bool = False
    # Newlines still to drop at the start of the answer when the engine splits the reasoning itself:
    # vLLM's parsers leave the "\n\n" after </think> in `content`; ThinkSplitter drops them.
    separator_left: int = 2
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def merge_tool_calls(self, deltas: list[dict[str, Any]]) -> None:
        """Assemble streamed tool-call fragments (arguments arrive in pieces) into whole calls."""
        for fragment in deltas:
            call = self.tool_calls.setdefault(
                int(fragment.get("index", 0)),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if fragment.get("id"):
                call["id"] = fragment["id"]
            function = fragment.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""


class EngineFailure(Exception):
    """The engine broke off a stream that had already started."""


class ChatRun:
    """Drives one prepared request: `start()`, iterate `chunks()`, read the counters, `close()`."""

    def __init__(
        self,
        prepared: PreparedChat,
        pool: UpstreamPool,
        client: httpx.AsyncClient,
        *,
        direct: EngineTransport | None = None,
        affinity: str | None = None,
        keep_text: bool = False,
        counts_per_chunk: bool = False,
    ) -> None:
        self.prepared = prepared
        self.pool = pool
        self.client = client
        self.direct = direct  # posts to http:// engines without httpx's client (see EngineTransport.post)
        self.affinity = affinity
        profile = prepared.profile
        self.force_budget = (
            prepared.decision.mode == "long"
            and prepared.decision.thinking_budget is not None
            and not profile.engine_budget
            and prepared.request.n == 1
        )
        self.keep_text = keep_text or self.force_budget
        # Each chunk carries the counts as of itself under "usage" (a TokenCounts), for clients that
        # ask for usage on every chunk: a batch is normalised before any of it is sent.
        self.counts_per_chunk = counts_per_chunk
        self._long = prepared.decision.mode == "long"
        self.starts_in_reasoning = profile.always_thinks and self._long
        self.choices: dict[int, ChoiceState] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        # The engine's counts are per choice: with continuous usage, vLLM reports each chunk's
        # `completion_tokens` (and reasoning tokens) for that chunk's choice alone; only the final
        # usage chunk, which has no choice, sums them. Keyed by choice index; None: that final sum.
        self._seen_completion: dict[int | None, int] = {}
        self._engine_reasoning: dict[int | None, int] = {}
        # The engine's latest cumulative usage, not yet counted, its choice, and whether its tokens
        # were reasoning: counting waits for a change of phase or choice, or a reader, not every
        # chunk (see _count_held_usage).
        self._held_usage: tuple[dict[str, Any], int | None, bool] | None = None
        self._engine_parses = False
        # How every text chunk of the current engine stream starts (its id, object, created and
        # model, then the delta's opening), learnt from its first chunk; None until then, or when
        # that chunk had more fields.
        self._opening: bytes | None = None
        self._learn_opening = True
        self._count_prompt = True
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.replica: Replica | None = None
        self.forced_end = False
        self.created = int(time.time())
        self._pending: tuple[httpx.Response, Replica] | None = None
        self._streaming: tuple[httpx.Response, Replica] | None = None  # being read by chunks()
        self._budget_hit = False  # the current engine stream was cut at the thinking budget

    # -- accounting ---------------------------------------------------------------------------

    @property
    def counts(self) -> TokenCounts:
        self._count_held_usage()
        reasoning = self.reasoning_tokens
        answer = self.answer_tokens
        if self._engine_reasoning and not self.forced_end:
            total = reasoning + answer
            reasoning = min(_summed(self._engine_reasoning), total)
            answer = total - reasoning
        images = min(self.prompt_tokens, self.prepared.image_count * self.prepared.profile.tokens_per_image)
        return TokenCounts(
            prompt=self.prompt_tokens,
            image=images,
            cached=self.cached_tokens,
            reasoning=reasoning,
            answer=answer,
        )

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.started) * 1000

    def finish_reason(self) -> str | None:
        reasons = [c.finish_reason for c in self.choices.values() if c.finish_reason]
        if "length" in reasons:
            return "length"
        return reasons[0] if reasons else None

    def _choice(self, index: int) -> ChoiceState:
        state = self.choices.get(index)
        if state is None:
            profile = self.prepared.profile
            splitter = ThinkSplitter(
                profile.think_start, profile.think_end, in_reasoning=self.starts_in_reasoning
            )
            state = self.choices[index] = ChoiceState(splitter)
        return state

    def _hold_usage(self, usage: dict[str, Any], index: int | None, phase_is_reasoning: bool) -> None:
        """Keep the engine's cumulative usage for counting later. The counts are cumulative per
        choice, so only the last usage of each run of same-choice, same-phase chunks needs counting:
        it is counted when the choice or phase changes or when the counters are read (`counts`, the
        budget check, a continuation)."""
        held = self._held_usage
        if held is not None and (held[1] != index or held[2] != phase_is_reasoning):
            self._count_usage(*held)
        self._held_usage = (usage, index, phase_is_reasoning)

    def _count_held_usage(self) -> None:
        if self._held_usage is not None:
            held, self._held_usage = self._held_usage, None
            self._count_usage(*held)

    def _count_usage(self, usage: dict[str, Any], index: int | None, phase_is_reasoning: bool) -> None:
        """Count what one usage object adds: for a choice, its own cumulative count against what was
        seen of that choice; for the final sum (`index` None), whatever the choices' counts missed."""
        if self._count_prompt:
            self.prompt_tokens = max(self.prompt_tokens, _count(usage, "prompt_tokens"))
            details = usage.get("prompt_tokens_details") or {}
            self.cached_tokens = max(self.cached_tokens, _count(details, "cached_tokens"))
        completion = _count(usage, "completion_tokens")
        seen = self._seen_completion
        new = completion - (_summed(seen) if index is None else seen.get(index, 0))
        if new > 0:
            seen[index] = seen.get(index, 0) + new
            if phase_is_reasoning:
                self.reasoning_tokens += new
            else:
                self.answer_tokens += new
        completion_details = usage.get("completion_tokens_details") or {}
        if isinstance(completion_details, dict) and "reasoning_tokens" in completion_details:
            reasoning = _count(completion_details, "reasoning_tokens")
            engine = self._engine_reasoning
            if index is None:
                engine[None] = engine.get(None, 0) + max(0, reasoning - _summed(engine))
            else:
                engine[index] = reasoning

    # -- the upstream conversation ------------------------------------------------------------

    async def _open(self, body: dict[str, Any]) -> tuple[httpx.Response, Replica]:
        """POST to a replica; a connection failure before the first byte is retried once elsewhere."""
        model = self.prepared.model
        tried: Replica | None = None
        for attempt in range(2):
            replica = self.pool.pick(model, affinity=self.affinity, exclude=tried)
            url = f"{replica.url}/v1/chat/completions"
            payload = orjson.dumps(body)
            headers = {"content-type": "application/json", "x-request-id": self.prepared.request_id}
            replica.in_flight += 1
            try:
                if self.direct is not None and serves(url):
                    response = await self.direct.post(url, payload, headers, self.client.timeout)
                else:
                    request = self.client.build_request("POST", url, content=payload, headers=headers)
                    response = await self.client.send(request, stream=True)
            except CONNECT_ERRORS as exc:
                replica.in_flight -= 1
                self.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
                tried = replica
                if attempt == 1 or len(self.pool.replicas) == 1:
                    raise EngineUnavailable(
                        f"The engine could not be reached ({type(exc).__name__})."
                    ) from exc
                continue
            except httpx.TimeoutException as exc:
                # Connected and sent, but no response head within upstream_header_timeout_s: not
                # retried (the engine may have begun; the client may retry), the replica drained
                # until a probe sees it again.
                replica.in_flight -= 1
                self.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
                raise GatewayTimeout(f"The engine did not answer in time ({exc}); retry shortly.") from exc
            except BaseException:
                replica.in_flight -= 1
                raise
            if response.status_code >= 400:
                replica.in_flight -= 1
                raise await _engine_error(response, self.prepared.request_id)
            return response, replica
        raise EngineUnavailable()

    async def start(self) -> None:
        """Connect to the engine; errors before the first byte surface here, as proper HTTP errors."""
        self._pending = await self._open(self.prepared.body)

    async def chunks(self) -> AsyncIterator[list[Chunk]]:
        """Normalised chunks (reasoning under `reasoning_content`/`reasoning`, never in `content`), one
        list per piece of the engine's stream: a busy engine's tokens arrive many to a read, and
        handing them on together saves a generator hop and a write per token. A chunk is a dict, or
        a `Plain` when it is the common one-piece-of-text kind."""
        body = self.prepared.body
        while True:
            if self._pending is not None:
                (response, replica), self._pending = self._pending, None
            else:
                response, replica = await self._open(body)
            self.replica = replica
            self._streaming = (response, replica)
            self._budget_hit = False
            self._opening, self._learn_opening = None, True
            try:
                async with contextlib.aclosing(self._relay(response)) as relay:
                    async for batch in relay:
                        yield batch
            finally:
                if self._streaming is not None:  # not already released by close()
                    self._streaming = None
                    replica.in_flight -= 1
                await response.aclose()
            if not self._budget_hit:
                break
            # Thinking budget reached and the engine cannot enforce it: close the reasoning and let
            # the engine continue with the answer (prefix-cached), within the remaining token bound.
            self.forced_end = True
            self.force_budget = False
            self._count_held_usage()
            remaining = int(body["max_tokens"]) - _summed(self._seen_completion)
            state = self._choice(0)
            if remaining <= 0:
                state.finish_reason = "length"
                break
            body = continuation_body(body, self.prepared.profile, "".join(state.reasoning), remaining)
            state.in_answer = True
            state.separator_left = 0
            state.splitter = None  # the continuation is all answer
            # The continuation is a new engine request: its counters start from zero, and its
            # prompt (ours: the original prompt plus the reasoning) is not the client's to pay.
            self._seen_completion = {}
            self._count_prompt = False

    async def close(self) -> None:
        """Release the engine connection: one opened but never read (the client left before the first
        chunk), or one whose reader was abandoned mid-stream. Closing it is what tells the engine to
        stop generating; waiting for the abandoned generator to be garbage-collected could take long."""
        for held in (self._pending, self._streaming):
            if held is not None:
                response, replica = held
                replica.in_flight -= 1
                await response.aclose()
        self._pending = self._streaming = None

    def _over_budget(self) -> bool:
        self._count_held_usage()
        budget = self.prepared.decision.thinking_budget
        state = self.choices.get(0)
        return (
            budget is not None
            and state is not None
            and not state.in_answer
            and self.reasoning_tokens >= budget
        )

    async def _relay(self, response: httpx.Response) -> AsyncGenerator[list[Chunk], None]:
        try:
            async for batch in self._parse(response):
                yield batch
        except httpx.HTTPError as exc:  # the connection broke mid-stream
            raise EngineFailure(f"the engine connection broke: {type(exc).__name__}: {exc}") from exc

    async def _parse(self, response: httpx.Response) -> AsyncIterator[list[Chunk]]:
        # SSE split on raw bytes: no text decoding and no line objects per chunk (the hot path).
        stream = sse_data(response)
        async for payloads in stream:
            batch: list[Chunk] = []
            for payload in payloads:
                chunk: Chunk | None = self._plain(payload)
                if chunk is None:  # not the common kind: parsed
                    if payload == b"[DONE]":
                        if batch:
                            yield batch
                        await _drain(stream)
                        return
                    try:
                        chunk = self._normalise(_engine_chunk(payload))
                    except EngineFailure:
                        if batch:
                            yield batch  # what came before the failure was sent by the engine all right
                        raise
                    if chunk is None:
                        continue
                    if self._learn_opening:
                        self._learn_opening = False
                        self._opening = text_opening(payload)
                batch.append(chunk)
                if self.force_budget and self._over_budget():
                    # Thinking budget reached: end here, chunks() continues with the answer.
                    self._budget_hit = True
                    yield batch
                    return
            if batch:
                yield batch
        raise EngineFailure("engine closed the stream before [DONE]")

    def _plain(self, payload: bytes) -> Plain | None:
        """The chunk as a `Plain` when it is the common kind (`engine.sse.match_text`: a few byte
        comparisons instead of a parse and a serialisation) and needs no rewriting, else None for
        `_normalise`. It does what `_normalise` does for such a chunk."""
        opening = self._opening
        found = None if opening is None else match_text(payload, opening)
        if found is None:
            return None
        state = self.choices.get(0)
        if state is None:
            return None
        reasoning, text, after_delta, usage = found
        if reasoning:
            self._engine_parses = True
            if self.keep_text:
                state.reasoning.append(orjson.loads(text))
        else:
            if not self._engine_parses and state.splitter is not None:
                return None  # raw output: ThinkSplitter reads the text
            if state.separator_left and self._engine_parses:
                if text.startswith(b'"\\'):
                    return None  # maybe the newlines after </think>, to drop
                state.separator_left = 0
            state.in_answer = True
            if self.keep_text:
                state.content.append(orjson.loads(text))
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if usage is not None:
            self._hold_usage(usage, 0, reasoning)
        return (reasoning, text, after_delta, self.counts if self.counts_per_chunk else None)

    def _normalise(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Rewrite one engine chunk in place (the hot path: one call per token), counting as it goes."""
        usage = chunk.pop("usage", None)
        choices = chunk.get("choices")
        phase_is_reasoning = False
        has_text = False
        index: int | None = None  # the choice the usage is of (vLLM: one choice a chunk); None: all
        for choice in choices or ():
            index = int(choice.get("index") or 0)
            state = self._choice(index)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            reasoning = delta.pop("reasoning", None)
            aliased = delta.pop("reasoning_content", None)
            reasoning = reasoning or aliased or ""
            original = delta.get("content")
            content = original or ""
            if content and state.separator_left and (self._engine_parses or reasoning):
                content = _drop_separator(state, content)
            splitter = None if self._engine_parses else state.splitter
            if reasoning:
                self._engine_parses = True
                splitter = None
            elif content and splitter is not None:
                reasoning, content = splitter.feed(content)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                state.finish_reason = finish_reason
                if splitter is not None:
                    tail_reasoning, tail_content = splitter.flush()
                    reasoning += tail_reasoning
                    content += tail_content
            if reasoning:
                delta["reasoning_content"] = delta["reasoning"] = reasoning
                phase_is_reasoning = has_text = True
                if self.keep_text:
                    state.reasoning.append(reasoning)
            if content:
                delta["content"] = content
                state.in_answer = has_text = True
                if self.keep_text:
                    state.content.append(content)
            elif original:
                del delta["content"]  # all of it was reasoning, or is held back as a possible tag
            if not (reasoning or content):  # no text: the tokens belong to the phase we are in
                phase_is_reasoning = phase_is_reasoning or (not state.in_answer and self._long)
            if self.keep_text and delta.get("tool_calls"):
                state.merge_tool_calls(delta["tool_calls"])
        if has_text and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if usage:
            self._hold_usage(usage, index if choices and len(choices) == 1 else None, phase_is_reasoning)
        if not choices:
            return None
        if self.counts_per_chunk:
            chunk["usage"] = self.counts
        return chunk


def _summed(counts: dict[int | None, int]) -> int:
    return sum(counts.values())


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


def _drop_separator(state: ChoiceState, content: str) -> str:
    """The answer's first text without the newlines that separated it from the reasoning (at most
    `separator_left` in all, as ThinkSplitter does for raw output). The answer has begun either way:
    the separator's tokens are counted as answer, as the engine counts them."""
    dropped = min(len(content) - len(content.lstrip("\n")), state.separator_left)
    text = content[dropped:]
    state.separator_left = 0 if text else state.separator_left - dropped
    state.in_answer = True
    return text


def _preview(payload: bytes) -> str:
    return payload[:200].decode(errors="replace")


def _engine_chunk(payload: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EngineFailure(f"engine sent invalid JSON: {_preview(payload)!r}") from exc
    if not isinstance(chunk, dict):
        raise EngineFailure(f"engine sent a chunk that is not a JSON object: {_preview(payload)!r}")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise EngineFailure(f"engine error: {message}")
    return chunk


async def _drain(stream: AsyncIterator[list[bytes]]) -> None:
    """Read the rest of a finished stream (the chunked-encoding end), so its keep-alive connection
    goes back to the pool: httpx closes a connection whose response was not read to the end."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in stream:
                pass


async def _engine_error(response: httpx.Response, request_id: str) -> APIError:
    """Turn an engine's HTTP error into ours. The engine's own words go to the log, not to the client:
    they may name its internals (paths, addresses, other requests). The field it names is kept."""
    raw = await response.aread()
    await response.aclose()
    status = response.status_code
    log.warning(
        "request %s: the engine answered %d: %s", request_id, status, raw[:1000].decode(errors="replace")
    )
    param = None
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
        error = orjson.loads(raw).get("error", {})
        named = error.get("param") if isinstance(error, dict) else None
        if isinstance(named, str) and _FIELD_NAME.fullmatch(named):
            param = named
    if 400 <= status < 500:
        return InvalidRequest(
            f"The engine refused the request (HTTP {status}); its reason is in the gateway's log "
            f"under request id {request_id}.",
            param=param,
            code="engine_rejected",
        )
    return UpstreamError(f"The engine failed (HTTP {status}).")
