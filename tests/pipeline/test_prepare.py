"""Preparing a request for the engine: upstream body, permissions, images, bounds (no engine needed)."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.auth.principal import ANONYMOUS, Principal
from app.core.errors import InvalidRequest, PermissionDenied
from app.pipeline.media import ImageLimits
from app.pipeline.prepare import (
    MediaPolicy,
    PreparedChat,
    continuation_body,
    load_images,
    new_request_id,
    prepare_chat,
)
from app.profiles.profile import ProfileRegistry
from app.protocols.chat.adapter import turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest

PROFILES = ProfileRegistry.from_dir(Path(__file__).resolve().parents[2] / "models" / "profiles")
MEDIA = MediaPolicy(ImageLimits(max_bytes=1_000_000, max_pixels=10_000_000, max_side=4096), max_images=2)


def png(width: int = 600, height: int = 300) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def prepare(body: dict[str, Any], principal: Principal = ANONYMOUS) -> PreparedChat:
    request = ChatCompletionRequest.model_validate(body)
    prepared = prepare_chat(turn_from_chat(request), principal, PROFILES, MEDIA)
    async with httpx.AsyncClient() as client:
        await load_images(prepared, MEDIA, client)
    return prepared


def user(content: Any) -> dict[str, Any]:
    return {"model": "thinkgate-arith", "messages": [{"role": "user", "content": content}]}


async def test_long_mode_body_for_the_bundled_model() -> None:
    prepared = await prepare({**user("What is 2 + 2?"), "reasoning_effort": "low", "temperature": 0.2,
                              "top_k": 5, "max_completion_tokens": 300})  # fmt: skip
    body = prepared.body
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["thinking_token_budget"] == PROFILES.by_name("thinkgate-arith").budgets["low"]
    assert body["stream"] is True and body["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    assert body["max_tokens"] == 300 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.2 and body["top_k"] == 5  # other fields pass through
    for ours in ("reasoning_effort", "reasoning_mode", "reasoning", "thinking", "include_reasoning"):
        assert ours not in body
    assert prepared.output_bound == 300


async def test_short_mode_sends_only_the_profiles_template_kwargs() -> None:
    """A client's chat_template_kwargs shape the prompt, so they never reach the engine: the profile's
    switch is all the template is told (the mode was read from them by `modes` already)."""
    prepared = await prepare({**user("hi"), "model": "thinkgate-arith:short",
                              "chat_template_kwargs": {"custom": 1}})  # fmt: skip
    assert prepared.model == "thinkgate-arith"
    assert prepared.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "thinking_token_budget" not in prepared.body


async def test_only_sampling_fields_pass_through_to_the_engine() -> None:
    """The short-mode bypass: a prefilled open think block continued as the assistant's turn. Fields
    that change how the prompt is built are dropped, whatever else the body says (an allowlist)."""
    prepared = await prepare(
        {
            "model": "thinkgate-arith",
            "reasoning_mode": "short",
            "messages": [
                {"role": "user", "content": "What is 482 * 37?", "prefix": True, "weight": 0},
                {"role": "assistant", "content": "<think>\n", "reasoning_content": "x"},
            ],
            "add_generation_prompt": False,
            "continue_final_message": True,
            "chat_template": "{{ messages }}",
            "documents": [{"text": "d"}],
            "echo": True,
            "best_of": 4,
            "thinking_token_budget": 9999,
            "min_p": 0.1,
            "presence_penalty": 0.5,
        }
    )
    body = prepared.body
    for dropped in ("add_generation_prompt", "continue_final_message", "chat_template", "documents", "echo",
                    "best_of", "thinking_token_budget"):  # fmt: skip
        assert dropped not in body, dropped
    assert body["min_p"] == 0.1 and body["presence_penalty"] == 0.5
    assert body["messages"] == [
        {"role": "user", "content": "What is 482 * 37?"},
        {"role": "assistant", "content": "<think>\n"},
    ]
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


async def test_the_prompt_bound_covers_tools_and_tool_calls() -> None:
    """Everything that reaches the prompt is in the reservation's bound, not only the message text."""
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "description": "d" * 600,
                                          "parameters": {"type": "object", "properties": {}}}}
        for i in range(100)
    ]  # fmt: skip
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "tool_1", "arguments": '{"a": "' + "x" * 5000 + '"}'},
    }
    plain = await prepare(user("hi"))
    with_tools = await prepare({**user("hi"), "tools": tools, "tool_choice": "none"})
    tools_size = len(__import__("json").dumps(tools))
    assert with_tools.prompt_bound >= plain.prompt_bound + tools_size
    history = await prepare(
        {
            "model": "thinkgate-arith",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
            ],
        }
    )
    assert history.prompt_bound >= plain.prompt_bound + 5000
    assert history.body["messages"][1]["tool_calls"] == [call]


async def test_default_output_bound_comes_from_the_profile_times_n() -> None:
    prepared = await prepare({**user("hi"), "n": 3})
    assert prepared.output_bound == 3 * PROFILES.by_name("thinkgate-arith").default_max_tokens


async def test_prompt_bound_is_an_upper_bound_of_bytes_and_images() -> None:
    text = "ü" * 100  # 200 bytes
    prepared = await prepare(
        user([{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": png()}}])
    )
    assert prepared.prompt_bound >= 200 + PROFILES.by_name("thinkgate-arith").tokens_per_image
    assert prepared.image_count == 1


async def test_images_take_the_profile_layout() -> None:
    """The bundled model's profile redraws images as a glyph grid (app/profiles/thinkgate_arith.py); here a
    thin black bar across a wide picture becomes one glyph in the first cell of the square."""
    picture = Image.new("RGB", (1000, 500), "white")
    picture.paste((0, 0, 0), (100, 200, 130, 300))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    prepared = await prepare(user([{"type": "image_url", "image_url": {"url": url}}]))
    sent = prepared.body["messages"][0]["content"][0]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1])))
    side = PROFILES.by_name("thinkgate-arith").max_image_side
    assert image.size == (side, side)
    grey = image.convert("L")
    assert grey.getpixel((16, 16)) < 128  # the bar, centred in cell 0
    assert min(grey.crop((32, 0, side, side)).getdata()) == 255  # nothing anywhere else


async def test_images_to_a_model_without_vision_are_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await prepare({**user([{"type": "image_url", "image_url": {"url": png()}}]), "model": "some-llama"})
    assert caught.value.param == "messages[0].content[0].image_url"


async def test_too_many_images() -> None:
    parts = [{"type": "image_url", "image_url": {"url": png(20, 20)}} for _ in range(3)]
    with pytest.raises(InvalidRequest) as caught:
        await prepare(user(parts))
    assert caught.value.param == "messages[0].content[2].image_url"


async def test_past_reasoning_is_not_sent_back() -> None:
    prepared = await prepare({"model": "thinkgate-arith", "messages": [
        {"role": "user", "content": "1 + 1"},
        {"role": "assistant", "content": "The answer is 2.", "reasoning_content": "one and one"},
        {"role": "user", "content": "and 2 + 2?"},
    ]})  # fmt: skip
    assert prepared.body["messages"][1] == {"role": "assistant", "content": "The answer is 2."}


async def test_key_restrictions_are_403() -> None:
    only_short = Principal("key_x", "x", allowed_modes=frozenset({"short"}))
    with pytest.raises(PermissionDenied) as caught:
        await prepare({**user("hi"), "reasoning_mode": "long"}, only_short)
    assert caught.value.status == 403 and "long" in caught.value.message
    capped = Principal("key_y", "y", max_effort="low")
    with pytest.raises(PermissionDenied) as caught:
        await prepare({**user("hi"), "reasoning_effort": "high"}, capped)
    assert caught.value.param == "reasoning_effort"
    assert (await prepare({**user("hi"), "reasoning_effort": "low"}, capped)).decision.mode == "long"


async def test_always_thinking_models_close_the_block_for_short_mode() -> None:
    prepared = await prepare(
        {**user("hi"), "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "reasoning_mode": "short"}
    )
    body = prepared.body
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\n\n</think>\n\n"}


async def test_kimi_style_switch_is_a_body_field() -> None:
    prepared = await prepare({**user("hi"), "model": "kimi-k2-thinking", "reasoning_mode": "long"})
    assert prepared.body["thinking"] == {"type": "enabled"}


def test_continuation_prefills_the_closed_reasoning() -> None:
    profile = PROFILES.by_name("kimi")
    upstream = {"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 100}
    body = continuation_body(upstream, profile, "some thoughts", 40)
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\nsome thoughts\n</think>\n\n"}
    assert body["max_tokens"] == 40 and body["continue_final_message"] and not body["add_generation_prompt"]


def test_request_ids_grow_with_time_and_stay_unique() -> None:
    """Time first, so the ledger's primary-key index grows at its end; random after, so ids made in
    the same millisecond (or by another gateway) still differ."""
    first = [new_request_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_request_id()
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", i) for i in [*first, later])
    assert len(set(first)) == len(first)
    assert all(i[:20] <= later[:20] for i in first) and max(first) < later
