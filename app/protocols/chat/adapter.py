"""The Chat Completions front door: a `ChatCompletionRequest` becomes the pipeline's `Turn`, and the
pipeline's chunks, counts and outcome become `chat.completion` objects and `chat.completion.chunk`
frames. It holds no business logic: what to run, and what it costs, the pipeline decides.

The common chunk, one piece of text, reaches this door as the engine's own bytes (a `Plain`) and is
framed around them without parsing or serialising (`ChunkFramer`); the rest arrive as dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from app.core.errors import APIError, InvalidRequest
from app.engine.sse import DELTA_OPEN
from app.metering.prices import TokenCounts, format_usd, to_usd
from app.pipeline.completion import Completion
from app.pipeline.modes import budget_signal, effort_signal, suffix_signal, switch_signal
from app.pipeline.run import Chunk
from app.pipeline.turn import Image, Message, Part, Signal, Turn
from app.protocols.chat.types import ChatCompletionRequest, ChatMessage, ImagePart
from app.protocols.sse import END, FLUSH

# Fields of the wire request that the door reads itself; the rest are sampling fields for the pipeline.
_DOOR_FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
     "reasoning_mode", "reasoning_effort", "reasoning", "thinking", "include_reasoning",
     "chat_template_kwargs"}
)  # fmt: skip


def turn_from_chat(request: ChatCompletionRequest) -> Turn:
    reasoning = request.reasoning
    return Turn(
        model=request.model,
        messages=[_message(message, f"messages[{i}]") for i, message in enumerate(request.messages)],
        signals=chat_signals(request),
        include_reasoning=request.include_reasoning is not False and not (reasoning and reasoning.exclude),
        sampling={
            key: value
            for key, value in request.model_dump(exclude_none=True).items()
            if key not in _DOOR_FIELDS
        },
        max_tokens=request.output_bound(),
        n=request.n,
    )


def _message(message: ChatMessage, param: str) -> Message:
    content: str | list[Part] | None
    if isinstance(message.content, list):
        content = [
            Image(part.image_url.url, f"{param}.content[{j}].image_url")
            if isinstance(part, ImagePart)
            else part.text
            for j, part in enumerate(message.content)
        ]
    else:
        content = message.content
    extra = message.model_extra or {}
    return Message(
        message.role,
        content,
        param,
        name=message.name,
        tool_calls=extra.get("tool_calls"),
        tool_call_id=extra.get("tool_call_id"),
        reasoning=message.reasoning_content or message.reasoning if message.role == "assistant" else None,
    )


def chat_signals(request: ChatCompletionRequest) -> list[Signal]:
    """Every reasoning dialect this door accepts, in the order conflicts are reported."""
    signals: list[Signal] = []
    if request.reasoning_mode in ("long", "short"):
        signals.append(Signal("reasoning_mode", request.reasoning_mode))
    if suffix := suffix_signal(request.model):
        signals.append(suffix)
    if request.reasoning_effort:
        signals.append(effort_signal("reasoning_effort", request.reasoning_effort))
    if reasoning := request.reasoning:
        if reasoning.enabled is not None:
            signals.append(switch_signal("reasoning.enabled", reasoning.enabled))
        if reasoning.effort:
            signals.append(effort_signal("reasoning.effort", reasoning.effort))
        if reasoning.max_tokens is not None:
            signals.append(budget_signal("reasoning.max_tokens", reasoning.max_tokens))
    if thinking := request.thinking:
        if thinking.type not in ("auto", "adaptive"):
            signals.append(switch_signal("thinking.type", thinking.type == "enabled"))
        if thinking.budget_tokens is not None:
            if thinking.type == "disabled":
                signals.append(Signal("thinking.budget_tokens", None))
            else:
                signals.append(budget_signal("thinking.budget_tokens", thinking.budget_tokens))
    kwargs = request.chat_template_kwargs or {}
    for key in ("enable_thinking", "thinking"):
        if key in kwargs:
            value = kwargs[key]
            if not isinstance(value, bool):
                raise InvalidRequest(
                    f"chat_template_kwargs.{key} must be true or false", param=f"chat_template_kwargs.{key}"
                )
            signals.append(switch_signal(f"chat_template_kwargs.{key}", value))
    return signals


def request_fingerprint(request: ChatCompletionRequest) -> str:
    """What an Idempotency-Key is bound to: the request's fields, whatever their order or spacing.
    How the answer is delivered (streamed or not) is left out: a retry may ask for the same
    completion either way, and is replayed in the form it asks for."""
    fields = request.model_dump(mode="json", exclude_unset=True, exclude={"stream", "stream_options"})
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


class ChatResponder:
    """The wire side of one chat completion: the SSE frames of a stream, or the JSON of a reply."""

    def __init__(self, completion: Completion, request: ChatCompletionRequest) -> None:
        self.completion = completion
        self.request = request
        completion.stored_response = lambda: orjson.dumps(self.body()).decode()

    def usage(self, counts: TokenCounts | None = None) -> dict[str, Any]:
        """The OpenAI usage object, for the run so far or for `counts` (a chunk's own)."""
        counts = self.completion.counts if counts is None else counts
        return {
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.completion,
            "total_tokens": counts.prompt + counts.completion,
            "prompt_tokens_details": {"cached_tokens": counts.cached, "image_tokens": counts.image},
            "completion_tokens_details": {
                "reasoning_tokens": counts.reasoning,
                "answer_tokens": counts.answer,
            },
            "cost": to_usd(self.completion.cost(counts)),
        }

    def headers(self) -> dict[str, str]:
        decision = self.completion.decision
        return {
            "x-request-id": self.completion.request_id,
            "x-reasoning-mode": decision.mode,
            "x-reasoning-mode-reason": decision.reason,
            **self.completion.notices,
        }

    def _fixed(self, object_type: str) -> dict[str, Any]:
        decision = self.completion.decision
        assert self.completion.run is not None
        return {
            "id": self.completion.request_id,
            "object": object_type,
            "created": self.completion.run.created,
            "model": self.request.model,
            "reasoning_mode": decision.mode,
            "reasoning_mode_reason": decision.reason,
        }

    async def frames(self) -> AsyncIterator[bytes]:
        completion = self.completion
        options = self.request.stream_options
        fixed = self._fixed("chat.completion.chunk")
        assert completion.run is not None
        framer = ChunkFramer(
            fixed,
            hide_reasoning=not completion.decision.include_reasoning,
            usage=self.usage if completion.run.counts_per_chunk else None,
        )
        async for batch in completion.chunks():
            events = framer.frames(batch)
            if events:
                yield events
        if completion.failure is not None:
            yield b"data: " + orjson.dumps(completion.failure.body()) + b"\n\n"
        # Settle once the client has everything so far (one that left meanwhile is `aborted`), and
        # before the stream ends, so a client that saw [DONE] reads its usage already recorded.
        yield FLUSH
        await completion.finish(disconnected=False)
        if options and options.include_usage:
            final = {**fixed, "choices": [], "usage": self.usage()}
            yield b"data: " + orjson.dumps(final) + b"\n\n"
        yield END

    def body(self) -> dict[str, Any]:
        """The `chat.completion` object of the run."""
        run = self.completion.run
        assert run is not None
        hide = not self.completion.decision.include_reasoning
        assert self.completion.prepared is not None
        asked_logprobs = bool(self.completion.prepared.body.get("logprobs"))
        choices = []
        for index, state in sorted(run.choices.items()):
            reasoning = "".join(state.reasoning) or None
            message: dict[str, Any] = {"role": "assistant", "content": "".join(state.content) or None}
            if reasoning and not hide:
                message["reasoning_content"] = message["reasoning"] = reasoning
            if state.tool_calls:
                message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
            logprobs = {"content": state.logprobs, "refusal": None} if asked_logprobs else None
            choice = {"index": index, "message": message, "finish_reason": state.finish_reason}
            choices.append({**choice, "logprobs": logprobs})
        return {**self._fixed("chat.completion"), "choices": choices, "usage": self.usage()}

    async def complete(self) -> tuple[int, bytes, dict[str, str]]:
        """Run to the end and settle; the status, JSON body and headers of the reply."""
        completion = self.completion
        headers = self.headers()
        async for _ in completion.chunks():
            pass
        await completion.finish(disconnected=False)  # settled before the client reads the response
        failure: APIError | None = completion.failure
        if failure is not None:
            return failure.status, orjson.dumps(failure.body()), {**headers, **failure.headers}
        headers["x-usage-cost"] = format_usd(completion.cost())
        return 200, orjson.dumps(self.body()), headers


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


async def replayed_frames(stored: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stored `chat.completion` (an Idempotency-Key retry) as a stream of chunks."""
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
    final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": stored.get("usage")}
    yield b"data: " + orjson.dumps(final) + b"\n\n"
    yield END
