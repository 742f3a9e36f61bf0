"""Preparing a turn for the engine: model and profile, mode decision, key permissions, images, body."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import orjson

from app.auth.principal import EFFORT_ORDER, Principal
from app.core.errors import InvalidRequest, PermissionDenied
from app.pipeline.media import ImageLimits, normalize_image_url
from app.pipeline.modes import ModeDecision, resolve_mode, split_model_suffix
from app.pipeline.turn import Image, Turn
from app.profiles.profile import ModelProfile, ProfileRegistry

# What a client may send that goes to the engine as it is: sampling and decoding settings only,
# an allowlist. Everything else the engine would read (add_generation_prompt, continue_final_message,
# chat_template, chat_template_kwargs, documents, echo, thinking_token_budget, best_of, ...) changes
# how the prompt is built or how much is generated unseen, and so could switch the mode or escape
# the meter: the gateway sets those itself from the mode decision, or not at all.
ENGINE_FIELDS = frozenset(
    {
        "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "n",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs",
        "top_logprobs", "user", "response_format", "tools", "tool_choice", "parallel_tool_calls",
        "min_tokens", "ignore_eos", "include_stop_str_in_output", "bad_words",
    }
)  # fmt: skip
# The fields of a message that reach the chat template besides its content; past reasoning reaches it
# as the profile says (`keep_reasoning`, in its `reasoning_field`).
MESSAGE_FIELDS = ("name", "tool_calls", "tool_call_id")
# The body fields that offer tools: dropped together on a model whose engine cannot run tools.
TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")
# Response headers the pipeline hands every door (`PreparedChat.notices`).
TOOLS_NOTICE = "x-thinkgate-tools"
TOOLS_DROPPED = "dropped"  # the model's engine cannot run tools
TOOLS_TOO_LONG = "dropped: too long for the context"  # their schemas would leave no room to answer
MAX_TOKENS_NOTICE = "x-thinkgate-max-tokens"
# Per message and per request, what a chat template adds around the text (an upper bound), and
# what it adds to present tools: a preamble, and some wrapping per tool. Tools are rendered as JSON
# by the templates we know, with ", " and ": " separators: at most 1.5 times the compact JSON.
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS_PER_REQUEST = 64
TEMPLATE_TOKENS_FOR_TOOLS = 512
TEMPLATE_TOKENS_PER_TOOL = 32


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    limits: ImageLimits
    max_images: int


@dataclass(frozen=True, slots=True)
class PendingImage:
    """An image part of the upstream body, checked and decoded only once the request is admitted."""

    part: dict[str, Any]  # the upstream body's part, whose URL `load_images` replaces
    url: str
    param: str


@dataclass(frozen=True, slots=True)
class PreparedChat:
    request_id: str
    turn: Turn
    model: str  # served id, without the mode suffix
    profile: ModelProfile
    decision: ModeDecision
    body: dict[str, Any]  # what goes to the engine (images filled in by `load_images`)
    prompt_bound: int  # upper bound of prompt tokens, for the reservation
    output_bound: int  # max generated tokens over all choices
    image_count: int
    images: tuple[PendingImage, ...] = ()
    # Response headers every door copies (tools dropped, the output bound fitted, ...).
    notices: dict[str, str] = field(default_factory=dict)


def new_request_id() -> str:
    """`chatcmpl-` and 24 hex digits: the time in milliseconds, then 52 random bits. Ids that grow
    with time land at the end of the ledger's primary-key index instead of at random pages in it
    (less ledger CPU per request: docs/performance.md)."""
    return f"chatcmpl-{time.time_ns() // 1_000_000:011x}{secrets.randbits(52):013x}"


def check_permissions(principal: Principal, decision: ModeDecision) -> None:
    if principal.allowed_modes is not None and decision.mode not in principal.allowed_modes:
        allowed = ", ".join(sorted(principal.allowed_modes)) or "none"
        raise PermissionDenied(
            f"This API key may not use {decision.mode}-CoT mode (allowed: {allowed}); "
            f"the mode came from {decision.source}",
            param=decision.source if decision.source != "auto" else "reasoning_mode",
        )
    effort, cap = decision.effort, principal.max_effort
    if effort and cap and EFFORT_ORDER.index(effort) > EFFORT_ORDER.index(cap):
        raise PermissionDenied(
            f"This API key may use reasoning effort up to {cap!r}, not {effort!r}", param="reasoning_effort"
        )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _json_size(value: Any) -> int:
    return len(orjson.dumps(value))


def _upstream_messages(
    turn: Turn, profile: ModelProfile, media: MediaPolicy
) -> tuple[list[dict[str, Any]], int, list[PendingImage]]:
    """Messages for the engine (image parts still to load), an upper bound of the bytes they put
    in the prompt, and their images. Past reasoning is sent as the profile says (`_replays`): most
    reasoning models are trained to see only the answers of earlier turns, some (DeepSeek V3.1+,
    Kimi K2) their reasoning within the current tool loop."""
    messages: list[dict[str, Any]] = []
    size = 0
    images: list[PendingImage] = []
    replay_from = _replay_from(turn, profile)
    for index, message in enumerate(turn.messages):
        out: dict[str, Any] = {"role": message.role}
        if message.reasoning and index >= replay_from and message.role == "assistant":
            out[profile.reasoning_field] = message.reasoning
            size += len(message.reasoning.encode())
        for name in MESSAGE_FIELDS:
            if (value := getattr(message, name)) is not None:
                out[name] = value
                size += _json_size(value)
        content = message.content
        if isinstance(content, str):
            out["content"] = content
            size += len(content.encode())
        elif isinstance(content, list):
            parts: list[dict[str, Any]] = []
            for part in content:
                if isinstance(part, Image):
                    parts.append(_pending_image(part, turn, profile, media, images))
                else:
                    parts.append({"type": "text", "text": part})
                    size += len(part.encode())
            out["content"] = parts
        elif message.role in ("user", "system", "developer"):
            raise InvalidRequest(
                f"{message.param}.content is required for role {message.role!r}",
                param=f"{message.param}.content",
            )
        messages.append(out)
    return messages, size, images


def _replay_from(turn: Turn, profile: ModelProfile) -> int:
    """The index of the first message whose past reasoning is replayed (past the end: none)."""
    if profile.keep_reasoning == "always":
        return 0
    if profile.keep_reasoning == "tool_loops":
        users = [i for i, message in enumerate(turn.messages) if message.role == "user"]
        return users[-1] + 1 if users else 0
    return len(turn.messages)


def _tool_policy(body: dict[str, Any], profile: ModelProfile, notices: dict[str, str]) -> None:
    """On a model whose engine cannot run tools, offered tools are dropped (the answer says so in a
    header) instead of the engine refusing the request; a client that insists on a tool call
    (`tool_choice` "required" or a named tool) gets a 400."""
    if profile.tools or not any(name in body for name in TOOL_FIELDS):
        return
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        raise InvalidRequest(
            f"The model {body['model']!r} cannot call tools: tool_choice must be 'auto' or 'none' "
            "(offered tools are then dropped)",
            param="tool_choice",
        )
    for name in TOOL_FIELDS:
        body.pop(name, None)
    notices[TOOLS_NOTICE] = TOOLS_DROPPED


def tools_droppable(body: dict[str, Any]) -> bool:
    """Whether the body offers tools the model may do without (it is not told to call one)."""
    choice = body.get("tool_choice")
    return bool(body.get("tools")) and choice != "required" and not isinstance(choice, dict)


def without_tools(prepared: PreparedChat, why: str) -> PreparedChat:
    """The prepared turn with its offered tools dropped, `why` in the tools notice."""
    body = {name: value for name, value in prepared.body.items() if name not in TOOL_FIELDS}
    bound = prepared.prompt_bound - _tools_bound(prepared.body.get("tools"))
    return replace(prepared, body=body, prompt_bound=bound, notices={**prepared.notices, TOOLS_NOTICE: why})


def _pending_image(
    image: Image, turn: Turn, profile: ModelProfile, media: MediaPolicy, images: list[PendingImage]
) -> dict[str, Any]:
    """The upstream part of an image, counted now and loaded after admission (`load_images`)."""
    if not profile.vision:
        raise InvalidRequest(f"The model {turn.model!r} does not accept images", param=image.param)
    if len(images) >= media.max_images:
        raise InvalidRequest(f"At most {media.max_images} images per request", param=image.param)
    upstream = {"type": "image_url", "image_url": {"url": ""}}
    images.append(PendingImage(upstream, image.url, f"{image.param}.url"))
    return upstream


def _tools_bound(tools: object) -> int:
    """Prompt tokens the chat template may spend on presenting the tools (see the constants)."""
    if not isinstance(tools, list) or not tools:
        return 0
    return _json_size(tools) * 3 // 2 + TEMPLATE_TOKENS_FOR_TOOLS + TEMPLATE_TOKENS_PER_TOOL * len(tools)


def prepare_chat(
    turn: Turn,
    principal: Principal,
    profiles: ProfileRegistry,
    media: MediaPolicy,
    request_id: str | None = None,
) -> PreparedChat:
    """Everything about a turn that costs no more than reading it: the mode, the key's permissions,
    the engine's body and the bounds of the reservation. Images are only counted here;
    `load_images` checks and decodes them once the request is admitted."""
    model = split_model_suffix(turn.model)[0]
    profile = profiles.for_model(model)
    decision = resolve_mode(turn, profile)
    check_permissions(principal, decision)
    messages, prompt_bytes, images = _upstream_messages(turn, profile, media)

    max_tokens = turn.max_tokens or profile.default_max_tokens
    body = {key: value for key, value in turn.sampling.items() if key in ENGINE_FIELDS}
    body["model"] = model
    body["messages"] = messages
    body["stream"] = True
    # Continuous usage: exact token counts even when the client disconnects mid-stream.
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    body["max_tokens"] = max_tokens
    body["n"] = turn.n
    notices: dict[str, str] = {}
    _tool_policy(body, profile, notices)
    if profile.reasoning:
        body = _deep_merge(body, dict(profile.upstream_switch(decision.mode)))
        if decision.mode == "long" and decision.thinking_budget is not None and profile.engine_budget:
            body["thinking_token_budget"] = decision.thinking_budget
        if decision.mode == "short" and profile.always_thinks:
            body = _close_thinking_upfront(body, profile)

    prompt_bound = (
        prompt_bytes
        + _tools_bound(body.get("tools"))
        + TEMPLATE_TOKENS_PER_MESSAGE * len(body["messages"])
        + TEMPLATE_TOKENS_PER_REQUEST
        + len(images) * profile.tokens_per_image
    )
    return PreparedChat(
        request_id=request_id or new_request_id(),
        turn=turn,
        model=model,
        profile=profile,
        decision=decision,
        body=body,
        prompt_bound=prompt_bound,
        output_bound=max_tokens * turn.n,
        image_count=len(images),
        images=tuple(images),
        notices=notices,
    )


async def load_images(prepared: PreparedChat, media: MediaPolicy, client: httpx.AsyncClient) -> None:
    """Check, fetch and decode the request's images into its engine body (400/413 naming the part)."""
    profile = prepared.profile
    limits = replace(media.limits, max_side=min(media.limits.max_side, profile.max_image_side))
    for image in prepared.images:
        normalized = await normalize_image_url(
            image.url, limits, param=image.param, client=client, layout=profile.image_layout
        )
        image.part["image_url"]["url"] = normalized.data_url


def _close_thinking_upfront(body: dict[str, Any], profile: ModelProfile) -> dict[str, Any]:
    """Short mode on an always-thinking model: start the answer with an empty, closed think block."""
    if profile.engine_budget:
        return {**body, "thinking_token_budget": 0}
    prefill = {"role": "assistant", "content": f"{profile.think_start}\n\n{profile.think_end}\n\n"}
    return {
        **body,
        "messages": [*body["messages"], prefill],
        "add_generation_prompt": False,
        "continue_final_message": True,
    }


def continuation_body(
    body: dict[str, Any], profile: ModelProfile, reasoning: str, remaining: int
) -> dict[str, Any]:
    """The request that goes on after a forced end of thinking: the reasoning so far, closed, is
    prefilled as the assistant's turn, and the engine continues with the answer (prefix-cached)."""
    prefill = {"role": "assistant", "content": f"{profile.think_start}\n{reasoning}\n{profile.think_end}\n\n"}
    return {
        **body,
        "messages": [*body["messages"], prefill],
        "add_generation_prompt": False,
        "continue_final_message": True,
        "max_tokens": remaining,
        "n": 1,
    }
