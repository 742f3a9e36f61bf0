"""The Responses API front door: a `ResponsesRequest` becomes the pipeline's `Turn` (its input items
read into chat messages, its tools and formats into the engine's chat fields), and the run becomes a
`response` object (`output.py`) or a stream of its events (`events.py`). No business logic: what to
run and what it costs, the pipeline decides.

Item mapping: a `message` item is a message of its role; a `function_call` item an assistant
message with `tool_calls` (consecutive calls, and an assistant message just before them, form one
message); a `function_call_output` a `tool` message; a `reasoning` item the model's past reasoning,
kept on the next assistant message (`Message.reasoning`: the pipeline decides whether it reaches
the engine). `instructions` is a system message before everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from app.core.errors import InvalidRequest
from app.pipeline.modes import effort_signal, suffix_signal
from app.pipeline.turn import Image, Message, Part, Signal, Turn
from app.protocols.responses.types import ResponsesRequest

FUNCTION_TOOL = "function"
# Tool types the engine cannot run that a client sends as optional extras, left out of the turn:
# Codex CLI offers OpenAI's hosted web search and a `namespace` of sub-agent tools with every turn.
# Any other type is refused with a 400 naming it (docs/clients.md).
SKIPPED_TOOLS = frozenset({"web_search", "web_search_preview", "namespace"})
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")

# Opens an encrypted reasoning blob (`include: ["reasoning.encrypted_content"]`); None: not available.
Opener = Callable[[str, str], str]


def turn_from_responses(
    request: ResponsesRequest, history: list[Message] | None = None, opener: Opener | None = None
) -> Turn:
    messages: list[Message] = []
    if request.instructions:
        messages.append(Message("system", request.instructions, "instructions"))
    messages.extend(history or [])
    messages.extend(input_messages(request, opener))
    return Turn(
        model=request.model,
        messages=messages,
        signals=responses_signals(request),
        include_reasoning=True,
        sampling=sampling(request),
        max_tokens=request.max_output_tokens,
        n=1,
    )


def responses_signals(request: ResponsesRequest) -> list[Signal]:
    signals: list[Signal] = []
    if suffix := suffix_signal(request.model):
        signals.append(suffix)
    if request.reasoning and request.reasoning.effort:
        signals.append(effort_signal("reasoning.effort", request.reasoning.effort))
    return signals


def sampling(request: ResponsesRequest) -> dict[str, Any]:
    """The engine's chat fields for the request's sampling, tools and output format."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if (value := getattr(request, name)) is not None:
            out[name] = value
    if user := request.safety_identifier or request.user:
        out["user"] = user
    tools = [
        _tool(tool, f"tools[{i}]")
        for i, tool in enumerate(request.tools or [])
        if tool.get("type") not in SKIPPED_TOOLS
    ]
    if tools:
        out["tools"] = tools
    if request.tool_choice is not None:
        out["tool_choice"] = _tool_choice(request.tool_choice)
    if request.text and request.text.format:
        fmt = _response_format(request.text.format)
        if fmt is not None:
            out["response_format"] = fmt
    return out


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind != FUNCTION_TOOL:
        raise InvalidRequest(
            f"Tools of type {kind!r} are not supported: the engine runs function tools only.",
            param=f"{param}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("A function tool needs a name.", param=f"{param}.name")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(f"Unknown tool_choice {choice!r}.", param="tool_choice")
        return choice
    if choice.get("type") == FUNCTION_TOOL and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"tool_choice of type {choice.get('type')!r} is not supported (function tools only).",
        param="tool_choice.type",
    )


def _response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("text.format.schema must be a JSON schema.", param="text.format.schema")
        schema = {"name": str(fmt.get("name") or "response"), "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = bool(fmt["strict"])
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(f"Unknown text.format type {kind!r}.", param="text.format.type")


# -- input items --------------------------------------------------------------------------------


def input_messages(request: ResponsesRequest, opener: Opener | None = None) -> list[Message]:
    if isinstance(request.input, str):
        return [Message("user", request.input, "input")]
    messages: list[Message] = []
    reasoning: str | None = None  # a reasoning item, waiting for the assistant message it belongs to
    for i, item in enumerate(request.input):
        param = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "reasoning":
            reasoning = _reasoning_text(item, param, opener)
        elif kind == "message":
            message = _message(item, param)
            if message.role == "assistant" and reasoning is not None:
                message, reasoning = replace(message, reasoning=reasoning), None
            messages.append(message)
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and reasoning is None:
                messages[-1] = replace(last, tool_calls=[*(last.tool_calls or []), call])
            else:
                messages.append(Message("assistant", None, param, tool_calls=[call], reasoning=reasoning))
                reasoning = None
        elif kind == "function_call_output":
            messages.append(
                Message("tool", _output_text(item, param), param, tool_call_id=_call_id(item, param))
            )
        else:
            raise InvalidRequest(f"Input items of type {kind!r} are not supported.", param=f"{param}.type")
    return messages


def _message(item: dict[str, Any], param: str) -> Message:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise InvalidRequest(f"Unknown role {role!r}.", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return Message(role, content, param)
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or a list of parts.", param=f"{param}.content")
    parts: list[Part] = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(part["refusal"])
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append(Image(part["image_url"], where))
        elif kind == "input_image":
            raise InvalidRequest("input_image needs an image_url (file ids are not supported).", param=where)
        else:
            raise InvalidRequest(f"Content parts of type {kind!r} are not supported.", param=f"{where}.type")
    if role == "assistant" or all(isinstance(part, str) for part in parts):
        return Message(role, "".join(p for p in parts if isinstance(p, str)), param)
    return Message(role, parts, param)


def _call_id(item: dict[str, Any], param: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("call_id is required.", param=f"{param}.call_id")
    return call_id


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    name, arguments = item.get("name"), item.get("arguments", "")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("A function_call needs a name.", param=f"{param}.name")
    if not isinstance(arguments, str):
        raise InvalidRequest("arguments must be a JSON string.", param=f"{param}.arguments")
    return {
        "id": _call_id(item, param),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _output_text(item: dict[str, Any], param: str) -> str:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [p.get("text") for p in output if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(str(t) for t in texts)
    raise InvalidRequest("output must be a string or a list of parts.", param=f"{param}.output")


def _reasoning_text(item: dict[str, Any], param: str, opener: Opener | None) -> str | None:
    """The model's past reasoning: from a sealed blob when there is one (it is what the model
    wrote), else from the item's reasoning text, else from its summary."""
    sealed = item.get("encrypted_content")
    if isinstance(sealed, str) and sealed:
        if opener is None:
            raise InvalidRequest("encrypted_content cannot be read here.", param=f"{param}.encrypted_content")
        return opener(sealed, f"{param}.encrypted_content")
    for field in ("content", "summary"):
        parts = item.get(field)
        if isinstance(parts, list) and parts:
            return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict)) or None
    return None


def request_fingerprint(request: ResponsesRequest) -> str:
    """What an Idempotency-Key is bound to: the request's fields, streamed or not."""
    fields = request.model_dump(mode="json", exclude_unset=True, exclude={"stream"})
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()
