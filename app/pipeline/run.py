"""One chat request against the engine: connect (with one retry), relay and normalise the stream,
count tokens exactly, force the end of thinking when the engine cannot, and report the outcome.

The engine is always asked to stream with continuous usage, whether or not the client streams, so
there is one code path, and token counts stay exact even when the client leaves mid-answer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from app.core.errors import EngineUnavailable
from app.engine.errors import CONNECT_ERRORS, engine_error, unanswered
from app.engine.pool import Replica, UpstreamPool
from app.engine.sse import EngineFailure, drain, engine_chunk, match_text, sse_data, text_opening
from app.engine.transport import EngineTransport, serves
from app.metering.prices import TokenCounts
from app.pipeline.prepare import PreparedChat, continuation_body
from app.pipeline.reasoning import ThinkSplitter
from app.pipeline.tally import Tally

log = logging.getLogger("thinkgate")


# A chunk whose delta is one piece of text, kept as the engine's bytes: the hot path (one per token),
# which the client side frames without parsing or serialising anything. In order: whether the text is
# reasoning; the text as a JSON string literal, quotes included, as the engine wrote it; the rest of
# its choice (see engine/sse.py); the counts as of this chunk when asked for
# (counts_per_chunk), else None. A bare tuple: building a NamedTuple per chunk showed in the
# gateway's CPU profile (docs/performance.md).
Plain = tuple[bool, bytes, bytes, TokenCounts | None]
Chunk = dict[str, Any] | Plain


@dataclass(slots=True)
class ChoiceState:
    splitter: ThinkSplitter | None  # None: everything from here on is answer (a budget continuation)
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    in_answer: bool = False
    # Newlines to drop at the answer's start when the engine splits the reasoning: vLLM's parsers leave
    # the "\n\n" after </think> in `content`, as ThinkSplitter would drop them.
    separator_left: int = 2
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] = field(default_factory=list)  # the answer's tokens', when the engine sent them

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
            and prepared.turn.n == 1
        )
        self.keep_text = keep_text or self.force_budget
        # Each chunk carries the counts as of itself under "usage" (a TokenCounts), for clients that
        # ask for usage on every chunk: a batch is normalised before any of it is sent.
        self.counts_per_chunk = counts_per_chunk
        self._long = prepared.decision.mode == "long"
        self.starts_in_reasoning = profile.always_thinks and self._long
        self.choices: dict[int, ChoiceState] = {}
        self.tally = Tally()
        self._engine_parses = False
        # How every text chunk of the current engine stream starts (its id, object, created and
        # model, then the delta's opening), learnt from its first chunk; None until then, or when
        # that chunk had more fields.
        self._opening: bytes | None = None
        self._learn_opening = True
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
        image_bound = self.prepared.image_count * self.prepared.profile.tokens_per_image
        return self.tally.counts(image_bound, engine_split=not self.forced_end)

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
                    raise unanswered(exc) from exc
                continue
            except httpx.TimeoutException as exc:
                # Connected and sent, but no response head within upstream_header_timeout_s: not
                # retried (the engine may have begun; the client may retry), the replica drained
                # until a probe sees it again.
                replica.in_flight -= 1
                self.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
                raise unanswered(exc) from exc
            except BaseException:
                replica.in_flight -= 1
                raise
            if response.status_code >= 400:
                replica.in_flight -= 1
                raw = await response.aread()
                await response.aclose()
                raise engine_error(response.status_code, raw, self.prepared.request_id)
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
            remaining = int(body["max_tokens"]) - self.tally.generated()
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
            self.tally.new_stream()

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
        self.tally.flush()
        budget = self.prepared.decision.thinking_budget
        state = self.choices.get(0)
        return (
            budget is not None
            and state is not None
            and not state.in_answer
            and self.tally.reasoning_tokens >= budget
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
                        await drain(stream)
                        return
                    try:
                        chunk = self._normalise(engine_chunk(payload))
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
            self.tally.hold(usage, 0, reasoning)
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
                    state.logprobs += (choice.get("logprobs") or {}).get("content") or ()
            elif original:
                del delta["content"]  # all of it was reasoning, or is held back as a possible tag
            if not (reasoning or content):  # no text: the tokens belong to the phase we are in
                phase_is_reasoning = phase_is_reasoning or (not state.in_answer and self._long)
            if self.keep_text and delta.get("tool_calls"):
                state.merge_tool_calls(delta["tool_calls"])
        if has_text and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if usage:
            self.tally.hold(usage, index if choices and len(choices) == 1 else None, phase_is_reasoning)
        if not choices:
            return None
        if self.counts_per_chunk:
            chunk["usage"] = self.counts
        return chunk


def _drop_separator(state: ChoiceState, content: str) -> str:
    """The answer's first text without the newlines that separated it from the reasoning (at most
    `separator_left` in all, as ThinkSplitter does for raw output). The answer has begun either way:
    the separator's tokens are counted as answer, as the engine counts them."""
    dropped = min(len(content) - len(content.lstrip("\n")), state.separator_left)
    text = content[dropped:]
    state.separator_left = 0 if text else state.separator_left - dropped
    state.in_answer = True
    return text
