"""The Messages API front door, request side: a `MessagesRequest` becomes the pipeline's `Turn`.

Anthropic's blocks become the engine's chat messages: `system` a system message; a user turn's
`tool_result` blocks tool messages (before the rest of its content); an assistant turn's `tool_use`
blocks tool calls and its `thinking` the message's past reasoning (its signature checked: the
gateway's own HMAC, `signing.py`); `redacted_thinking` is dropped (the gateway never makes one).
`thinking` becomes signals in `pipeline.modes`' vocabulary, `tools`/`tool_choice` OpenAI function
tools, `stop_sequences` `stop`, `metadata.user_id` `user`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from app.core.errors import InvalidRequest
from app.pipeline.modes import budget_signal, suffix_signal, switch_signal
from app.pipeline.turn import Image, Message, Part, Signal, Turn
from app.protocols.messages.signing import ThinkingSigner
from app.protocols.messages.types import (
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)


def turn_from_messages(request: CountTokensRequest, signer: ThinkingSigner) -> Turn:
    messages: list[Message] = []
    system = request.system
    if isinstance(system, list):
        system = "\n\n".join(block.text for block in system)
    if system:
        messages.append(Message("system", system, "system"))
    for i, message in enumerate(request.messages):
        if message.role == "user":
            messages.extend(_user(message, f"messages[{i}]"))
        else:
            messages.append(_assistant(message, f"messages[{i}]", signer))
    sampling: dict[str, Any] = {}
    max_tokens: int | None = None
    if isinstance(request, MessagesRequest):
        max_tokens = request.max_tokens
        for name in ("temperature", "top_p", "top_k"):
            if (value := getattr(request, name)) is not None:
                sampling[name] = value
        if request.stop_sequences:
            sampling["stop"] = request.stop_sequences
        if request.metadata and request.metadata.user_id:
            sampling["user"] = request.metadata.user_id
    sampling.update(_tools(request))
    return Turn(
        model=request.model,
        messages=messages,
        signals=messages_signals(request),
        sampling=sampling,
        max_tokens=max_tokens,
    )


def messages_signals(request: CountTokensRequest) -> list[Signal]:
    signals: list[Signal] = []
    if suffix := suffix_signal(request.model):
        signals.append(suffix)
    thinking = request.thinking
    if thinking is not None and thinking.type == "enabled":
        signals.append(switch_signal("thinking.type", True))
        if thinking.budget_tokens is not None:
            signals.append(budget_signal("thinking.budget_tokens", thinking.budget_tokens))
    elif thinking is not None and thinking.type == "disabled":
        signals.append(switch_signal("thinking.type", False))
    return signals  # adaptive: no signal, the auto router decides


def _tools(request: CountTokensRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "parameters": tool.input_schema,
                },
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    return out


def _image(block: ImageBlock, param: str) -> Image:
    source = block.source
    if source.type == "base64":
        return Image(f"data:{source.media_type};base64,{source.data}", f"{param}.source")
    return Image(source.url, f"{param}.source.url")


def _user(message: MessageParam, param: str) -> list[Message]:
    if isinstance(message.content, str):
        return [Message("user", message.content, param)]
    out: list[Message] = []
    parts: list[Part] = []
    for j, block in enumerate(message.content):
        where = f"{param}.content[{j}]"
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, where))
        elif isinstance(block, ToolResultBlock):
            out.append(Message("tool", _tool_result(block, where), where, tool_call_id=block.tool_use_id))
        else:
            raise InvalidRequest(
                f"A {block.type} block may only be in an assistant message.", param=f"{where}.type"
            )
    if parts:
        out.append(Message("user", parts, param))
    return out


def _tool_result(block: ToolResultBlock, param: str) -> str | list[Part]:
    content = block.content
    if content is None:
        text: str | list[Part] = ""
    elif isinstance(content, str):
        text = content
    else:
        text = [
            part.text if isinstance(part, TextBlock) else _image(part, f"{param}.content[{k}]")
            for k, part in enumerate(content)
        ]
    if block.is_error and isinstance(text, str):
        text = f"Error: {text}"
    return text


def _assistant(message: MessageParam, param: str, signer: ThinkingSigner) -> Message:
    if isinstance(message.content, str):
        return Message("assistant", message.content, param)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for j, block in enumerate(message.content):
        where = f"{param}.content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            calls.append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
            )
        elif isinstance(block, ThinkingBlock):
            if not signer.verify(block.thinking, block.signature):
                raise InvalidRequest(
                    f"{where}: Invalid `signature` in `thinking` block", param=f"{where}.signature"
                )
            reasoning.append(block.thinking)
        elif isinstance(block, RedactedThinkingBlock):
            continue  # the gateway never makes one: nothing of it can reach the model
        else:
            raise InvalidRequest(
                f"A {block.type} block may only be in a user message.", param=f"{where}.type"
            )
    return Message(
        "assistant",
        "".join(texts) if texts or not calls else None,
        param,
        tool_calls=calls or None,
        reasoning="".join(reasoning) or None,
    )


def request_fingerprint(request: MessagesRequest) -> str:
    """What an Idempotency-Key is bound to: the request's fields, whatever their order; how the
    answer is delivered (streamed or not) is left out."""
    fields = request.model_dump(mode="json", exclude_unset=True, exclude={"stream"})
    return hashlib.sha256(b"messages:" + orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()
