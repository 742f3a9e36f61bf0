"""Wire models of the OpenAI Responses API request: what a client may send, validated at the edge.

Input items are kept as dicts here and read one by one by the adapter (`adapter.py`), which names
the offending item in its errors (`input[3].call_id`). Unknown top-level fields are accepted and
ignored (clients such as Codex send fields for OpenAI's hosted features); nothing unknown reaches
the engine.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS = 2**31 - 1
# The efforts the pipeline knows (`pipeline.modes.effort_signal`): none/minimal short-CoT, the rest long.
Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=512)
    safety_identifier: str | None = Field(None, max_length=512)
    store: bool | None = None
    previous_response_id: str | None = Field(None, max_length=200)
    include: list[str] | None = None
    stream: bool = False
    background: bool | None = None
