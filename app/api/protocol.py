"""Wire models of the OpenAI surface: what a client may send, validated once at the edge.

Unknown top-level fields are kept (`extra="allow"`) and passed through to the engine, so newer
OpenAI or vLLM sampling options work without a gateway release.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Effort = Literal["none", "minimal", "low", "medium", "high"]


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


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = Field(None, description="Past reasoning (accepted, not sent upstream).")
    reasoning: str | None = Field(
        None, description="Alias of reasoning_content (accepted, not sent upstream)."
    )


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ReasoningOptions(_Strict):
    """OpenRouter's `reasoning` object."""

    effort: Effort | None = None
    max_tokens: int | None = Field(
        None, ge=0, description="Thinking budget in tokens (0 turns thinking off)."
    )
    exclude: bool = False
    enabled: bool | None = None


class ThinkingOptions(_Strict):
    """Anthropic / Moonshot `thinking` object."""

    type: Literal["enabled", "disabled", "auto"]
    budget_tokens: int | None = Field(None, ge=0)


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` body."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(
        min_length=1, description="A served model id, optionally with a :long or :short suffix."
    )
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="Bound on generated tokens (reasoning + answer).")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Same as max_tokens (OpenAI's newer name)."
    )
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
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

    def output_bound(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EstimateTokenCountRequest(BaseModel):
    """`POST /v1/tokenizers/estimate-token-count` body (Moonshot-compatible)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
