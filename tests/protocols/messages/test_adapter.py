"""The Messages door's translation, without a gateway: blocks → the pipeline's Turn, signatures,
Anthropic's error bodies, stop reasons and the stream's content blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.api.guards import BodyLimit
from app.core.config import Settings
from app.core.errors import (
    AuthenticationFailed,
    EngineUnavailable,
    InvalidRequest,
    QuotaExceeded,
    anthropic_body,
)
from app.pipeline.turn import Image, Signal
from app.protocols.messages.adapter import turn_from_messages
from app.protocols.messages.responder import BlockWriter, replayed_events, stop_reason
from app.protocols.messages.signing import ThinkingSigner, signer_for
from app.protocols.messages.types import MessagesRequest

SIGNER = ThinkingSigner([b"k1"])


def request(**fields: Any) -> MessagesRequest:
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}
    return MessagesRequest.model_validate(body)


def test_blocks_become_the_engines_messages() -> None:
    signature = SIGNER.sign("past thought")
    turn = turn_from_messages(
        request(
            system=[
                {"type": "text", "text": "A"},
                {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}},
            ],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "redacted_thinking", "data": "opaque"},
                        {"type": "thinking", "thinking": "past thought", "signature": signature},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "42"}],
                        },
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
        ),
        SIGNER,
    )
    system, user, assistant, tool, last = turn.messages
    assert (system.role, system.content) == ("system", "A\n\nB")
    assert user.content == [
        "look",
        Image("data:image/png;base64,iVBO", "messages[0].content[1].source"),
        Image("https://example.com/a.png", "messages[0].content[2].source.url"),
    ]
    assert assistant.reasoning == "past thought" and assistant.content is None
    assert assistant.tool_calls == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "t1", ["42"])
    assert (last.role, last.content) == ("user", ["and?"])


@pytest.mark.parametrize(
    ("thinking", "model", "signals"),
    [
        ({"type": "enabled", "budget_tokens": 50}, "m",
         [Signal("thinking.type", "long"), Signal("thinking.budget_tokens", "long", budget=50)]),
        ({"type": "disabled"}, "m", [Signal("thinking.type", "short")]),
        ({"type": "adaptive"}, "m", []),
        (None, "m:short", [Signal("model", "short")]),
    ],
)  # fmt: skip
def test_thinking_becomes_mode_signals(thinking: Any, model: str, signals: list[Signal]) -> None:
    extra = {"thinking": thinking} if thinking else {}
    assert turn_from_messages(request(model=model, **extra), SIGNER).signals == signals


def test_tools_choice_and_sampling_become_openai_fields() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    turn = turn_from_messages(
        request(
            tools=[
                {
                    "name": "f",
                    "description": "d",
                    "input_schema": schema,
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            top_k=5,
            metadata={"user_id": "u"},
        ),
        SIGNER,
    )
    assert turn.sampling == {
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "stop": ["END"],
        "top_k": 5,
        "user": "u",
    }
    assert turn.max_tokens == 100
    for kind, expected in (("auto", "auto"), ("any", "required"), ("none", "none")):
        assert (
            turn_from_messages(request(tool_choice={"type": kind}), SIGNER).sampling["tool_choice"]
            == expected
        )


def test_a_thinking_block_needs_the_gateways_signature_under_any_current_key() -> None:
    old = ThinkingSigner([b"old"])
    rotated = ThinkingSigner([b"new", b"old"])
    assert rotated.verify("t", old.sign("t")) and rotated.sign("t") != old.sign("t")
    assert not rotated.verify("t", ThinkingSigner([b"other"]).sign("t"))
    assert not rotated.verify("changed", old.sign("t"))
    forged = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "x"}]},
    ]
    with pytest.raises(InvalidRequest) as refused:
        turn_from_messages(request(messages=forged), rotated)
    assert refused.value.param == "messages[1].content[0].signature"


def test_the_generated_key_is_kept_and_reused(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    first, second = signer_for(settings), signer_for(settings)
    assert first.sign("x") == second.sign("x")
    assert (tmp_path / "thinking-signing.key").stat().st_mode & 0o777 == 0o600
    configured = Settings(thinking_signing_keys="a,b")  # type: ignore[arg-type]
    assert signer_for(configured).keys == [b"a", b"b"]


def test_errors_have_anthropics_shape() -> None:
    assert anthropic_body(AuthenticationFailed("no")) == {
        "type": "error", "error": {"type": "authentication_error", "message": "no", "code": "invalid_api_key"}
    }  # fmt: skip
    assert anthropic_body(InvalidRequest("bad", param="x"))["error"]["type"] == "invalid_request_error"
    assert anthropic_body(QuotaExceeded("poor"))["error"]["type"] == "rate_limit_error"
    assert anthropic_body(EngineUnavailable())["error"]["type"] == "overloaded_error"


def test_stop_reasons() -> None:
    assert stop_reason("length", None, None, False) == ("max_tokens", None)
    assert stop_reason("tool_calls", None, None, True) == ("tool_use", None)
    assert stop_reason("stop", "END", ["END"], False) == ("stop_sequence", "END")
    assert stop_reason("stop", None, ["END"], False) == ("end_turn", None)


def events(frames: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in frames.split(b"\n") if line.startswith(b"data: ")]


def test_blocks_open_and_close_as_the_deltas_change() -> None:
    writer = BlockWriter(SIGNER)
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":'},
                        }
                    ]
                },
            }
        ]
    }
    frames = (
        writer.frames((True, b'"th"', b"", None))
        + writer.frames((True, b'"ink"', b"", None))
        + writer.frames((False, b'"hi \\"x\\""', b"", None))
        + writer.frames(chunk)
        + writer.frames(
            {
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}
                ]
            }
        )
        + writer.close()
    )
    got = [(e["type"], e.get("index"), e.get("delta") or e.get("content_block")) for e in events(frames)]
    assert got == [
        ("content_block_start", 0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "th"}),
        ("content_block_delta", 0, {"type": "thinking_delta", "thinking": "ink"}),
        ("content_block_delta", 0, {"type": "signature_delta", "signature": SIGNER.sign("think")}),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, {"type": "text", "text": ""}),
        ("content_block_delta", 1, {"type": "text_delta", "text": 'hi "x"'}),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, {"type": "tool_use", "id": "c1", "name": "f", "input": {}}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": '{"a":'}),
        ("content_block_delta", 2, {"type": "input_json_delta", "partial_json": "1}"}),
        ("content_block_stop", 2, None),
    ]
    assert writer.had_tool_use


async def test_a_replay_streams_the_stored_message() -> None:
    stored = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
              "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 2},
              "content": [{"type": "text", "text": "hi"}]}  # fmt: skip
    frames = b"".join([frame async for frame in replayed_events(stored)])
    kinds = [e["type"] for e in events(frames)]
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]  # fmt: skip


async def test_a_body_over_the_limit_is_refused_in_anthropics_shape() -> None:
    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the body limit let it through")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path, shape in (("/v1/messages", {"type", "error"}), ("/v1/chat/completions", {"error"})):
        sent.clear()
        scope = {"type": "http", "path": path, "method": "POST", "headers": [(b"content-length", b"5000")]}
        await BodyLimit(never, max_bytes=1024)(scope, None, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 413
        assert set(orjson.loads(sent[1]["body"])) == shape
