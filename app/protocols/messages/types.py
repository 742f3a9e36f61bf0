"""Wire models of the Anthropic Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).

Blocks and requests are validated once at the edge; `cache_control` (and `citations`) are accepted on
any block and ignored. Unknown top-level fields are ignored, as newer clients send more than this door
reads (Claude Code's `context_management`, for one).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TOKENS = 2**31 - 1


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_control: dict[str, Any] | None = None  # accepted and ignored (the engine caches prefixes itself)


class TextBlock(_Block):
    type: Literal["text"]
    text: str
    citations: list[dict[str, Any]] | None = None


class Base64Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["base64"]
    media_type: str = Field(min_length=1)
    data: str = Field(min_length=1)


class URLSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(_Block):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ToolResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Block):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Block):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `eager_input_streaming`, `defer_loading`

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type 'tool' needs the tool's name")
        return self


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. `display`

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _budget(self) -> Self:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking of type 'enabled' needs budget_tokens")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str | None = Field(None, max_length=256)


class CountTokensRequest(BaseModel):
    """The body of `/v1/messages/count_tokens`: a message request without its output settings."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @model_validator(mode="after")
    def _numbers_the_engine_can_take(self) -> Self:
        """What passes through untyped (tool inputs and schemas) must be JSON the engine can take:
        integers within 64 bits."""
        try:
            orjson.dumps(self.model_dump(include={"messages", "tools"}))
        except orjson.JSONEncodeError:
            raise ValueError(
                "a number in messages or tools is out of range (integers fit in 64 bits)"
            ) from None
        return self


class MessagesRequest(CountTokensRequest):
    """The body of `POST /v1/messages`."""

    max_tokens: int = Field(ge=1, le=MAX_TOKENS)
    stream: bool = False
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=MAX_TOKENS)
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _budget_below_max_tokens(self) -> Self:
        thinking = self.thinking
        if thinking and thinking.type == "enabled" and (thinking.budget_tokens or 0) >= self.max_tokens:
            raise ValueError("max_tokens must be greater than thinking.budget_tokens")
        return self
