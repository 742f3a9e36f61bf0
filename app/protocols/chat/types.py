"""Wire models of the OpenAI surface: what a client may send, validated once at the edge.

Unknown top-level fields are kept (`extra="allow"`) and passed through to the engine, so newer
OpenAI or vLLM sampling options work without a gateway release.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]

# What a number a client sends must fit: token counts the ledger's INTEGER columns (32-bit on
# PostgreSQL) and vLLM's own bounds; any other integer the signed 64-bit range (vLLM's seed, and what
# the upstream body's JSON encoder can write). Past them: a 400 naming the field, never a 500.
MAX_TOKENS = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str = Field(
        min_length=1, description="A data: URL (png, jpeg, webp, gif) or an allowlisted https URL."
    )
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = Field(
        None, description="Anthropic's prompt-caching hint: accepted, ignored (the engine caches prefixes)."
    )


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = Field(
        None,
        description="Past reasoning: replayed to the engine as the model's profile says (keep_reasoning).",
    )
    reasoning: str | None = Field(None, description="Alias of reasoning_content.")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ReasoningOptions(_Strict):
    """OpenRouter's `reasoning` object."""

    effort: Effort | None = None
    max_tokens: int | None = Field(
        None, ge=0, le=MAX_TOKENS, description="Thinking budget in tokens (0 turns thinking off)."
    )
    exclude: bool = False
    enabled: bool | None = None
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="OpenAI's reasoning summary: accepted (the whole reasoning is returned)."
    )


class ThinkingOptions(_Strict):
    """Anthropic / Moonshot `thinking` object."""

    type: Literal["enabled", "disabled", "auto", "adaptive"]  # auto, adaptive: the auto router
    budget_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` body."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="A served model id, optionally with a :long or :short suffix."
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Bound on generated tokens (reasoning + answer)."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Same as max_tokens (OpenAI's newer name)."
    )
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    user: str | None = None

    reasoning_mode: Literal["long", "short", "auto"] | None = Field(
        None, description="Thinkgate: long-CoT, short-CoT, or let the router decide."
    )
    reasoning_effort: Effort | None = None
    reasoning: ReasoningOptions | None = None
    thinking: ThinkingOptions | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: bool | None = Field(
        None, description="false hides reasoning (still generated, counted)."
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _numbers_the_engine_can_take(self) -> Self:
        """Numbers in what passes through untyped (unknown fields, template switches, messages' extra
        fields) must be finite, and integers within 64 bits; the typed fields have their own bounds."""
        found = _out_of_range_in(self, _FREE_FIELDS, ())
        for index, message in enumerate(self.messages):
            found = found or _out_of_range_in(message, _FREE_MESSAGE_FIELDS, ("messages", index))
        if found is not None:
            loc, value = found
            kind = (
                "a finite number"
                if isinstance(value, float)
                else f"an integer from {INT64_MIN} to {INT64_MAX}"
            )
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("number_out_of_range", f"Input should be {kind}"),
                        loc=loc,
                        input=value,
                    )
                ],
            )
        return self

    def output_bound(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EstimateTokenCountRequest(BaseModel):
    """`POST /v1/tokenizers/estimate-token-count` body (Moonshot-compatible)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid_as_a_chat_request(self) -> Self:
        """The count is of the chat request this body would be: it must be a valid one (its errors
        are 400s naming the field, like the chat route's)."""
        ChatCompletionRequest.model_validate(self.model_dump(exclude_none=True))
        return self


def _free_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that hold arbitrary JSON (typed with Any): checked by `_out_of_range_in`."""
    return tuple(name for name, info in model.model_fields.items() if "Any" in str(info.annotation))


_FREE_FIELDS = _free_fields(ChatCompletionRequest)
_FREE_MESSAGE_FIELDS = _free_fields(ChatMessage)


def _out_of_range_in(
    model: BaseModel, fields: tuple[str, ...], loc: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], object] | None:
    """The first number in `model`'s extra fields and its `fields` that is not finite or not a 64-bit
    integer, with where it is; None when there is none. Cheap when there are no extra fields (the
    usual request): this runs on every chat request."""
    stack: list[tuple[tuple[str | int, ...], object]] = []
    extra = model.__pydantic_extra__
    if extra:
        stack.extend(((*loc, name), value) for name, value in extra.items())
    for name in fields:
        value = getattr(model, name)
        if value is not None:
            stack.append(((*loc, name), value))
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*where, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*where, index), item) for index, item in enumerate(value))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                return where, value
        elif isinstance(value, float) and not math.isfinite(value):
            return where, value
    return None
