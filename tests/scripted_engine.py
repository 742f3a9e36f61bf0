"""A scripted engine shaped like vLLM's OpenAI server, for the cases a real model cannot produce on
demand: a prompt the engine counts far larger than its text, more tokens than `max_tokens`, reasoning
in a short-mode request, per-choice usage of `n > 1` streams at a chosen pace. Tests that use it say
so; everything a real engine can show is tested against the real one.

It serves `GET /v1/models`, `POST /v1/tokenize` and streaming `POST /v1/chat/completions` with
continuous usage as vLLM 0.32 sends it (each chunk counts its own choice; the final usage chunk sums),
and keeps every request body it was sent in `requests`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn

from tests.support import GatewayProcess, free_port, read_body, start_gateway

MODEL = "thinkgate-arith"


@dataclass
class Script:
    prompt_tokens: int = 12
    reasoning_tokens: int = 4  # per choice, sent as delta.reasoning
    answer_tokens: int = 4  # per choice, sent as delta.content
    obey_max_tokens: bool = True  # False: ignore max_tokens (a broken engine)
    token_delay_s: float = 0.0  # pause before each token
    reasoning_in_short_mode: bool = False  # reason even when enable_thinking is false
    tokenize_count: int = 7
    tokenize_per_tool: int = 0  # more prompt tokens /tokenize counts per tool the request offers
    # Words instead of "x" tokens (one token a word): the answer ("{result}" is replaced by the last
    # tool result of the conversation) and the reasoning.
    answer_text: str | None = None
    reasoning_text: str | None = None
    # A tool call (function name, arguments) made after the reasoning, as vLLM's tool parser streams
    # it (the name first, the arguments in two pieces, finish_reason "tool_calls"), when the request
    # offers a tool of that name and the conversation does not end with a tool's result.
    tool_call: tuple[str, dict[str, Any]] | None = None
    # The log-probability of every generated token, sent as vLLM does (`choices[].logprobs.content`)
    # when the request asks for `logprobs`; None: none sent (an engine without them). What auto mode's
    # escalation reads: a real model cannot be made to be this sure or unsure on demand.
    token_logprob: float | None = None


@dataclass
class ScriptedEngine:
    script: Script = field(default_factory=Script)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path = scope["path"]
        if path == "/v1/models":
            await _json(send, {"object": "list", "data": [{"id": MODEL, "max_model_len": 1024}]})
        elif path == "/tokenize":
            request = orjson.loads(body)
            self.requests.append(request)
            count = self.script.tokenize_count + self.script.tokenize_per_tool * len(
                request.get("tools") or ()
            )
            await _json(send, {"count": count, "max_model_len": 1024})
        elif path == "/v1/chat/completions":
            request = orjson.loads(body)
            self.requests.append(request)
            await self._stream(request, send)
        else:
            await _json(send, {"error": {"message": "not found"}}, status=404)

    async def _stream(self, request: dict[str, Any], send: Any) -> None:
        script = self.script
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        thinking = (request.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        reasons = thinking or script.reasoning_in_short_mode
        limit = int(request.get("max_tokens") or 10**9) if script.obey_max_tokens else 10**9
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": MODEL}  # fmt: skip
        totals = []
        pieces = _pieces(script, request, reasons)
        reasoning = sum("reasoning" in delta for delta in pieces)
        logprob = script.token_logprob if request.get("logprobs") else None
        for index in range(int(request.get("n") or 1)):
            count = 0
            for delta in pieces:
                if count >= limit:
                    break
                if script.token_delay_s:
                    await asyncio.sleep(script.token_delay_s)
                count += 1
                choice = {"index": index, "delta": delta, "finish_reason": None}
                if logprob is not None:
                    choice["logprobs"] = _logprobs(delta, logprob)
                chunk = {**base, "choices": [choice],
                         "usage": _usage(script.prompt_tokens, count, min(count, reasoning))}  # fmt: skip
                await _event(send, chunk)
            calls = any("tool_calls" in delta for delta in pieces)
            finish = "length" if count >= limit else "tool_calls" if calls else "stop"
            last = {"index": index, "delta": {}, "finish_reason": finish}
            if finish == "stop" and script.answer_text is not None:
                last["stop_reason"] = _answer(script.answer_text, request)[1]  # as vLLM: the stop string
            chunk = {**base, "choices": [last],
                     "usage": _usage(script.prompt_tokens, count, min(count, reasoning))}  # fmt: skip
            await _event(send, chunk)
            totals.append((count, min(count, reasoning)))
        final = _usage(script.prompt_tokens, sum(c for c, _ in totals), sum(r for _, r in totals))
        await _event(send, {**base, "choices": [], "usage": final})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    def start(self) -> ScriptedEngine:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise AssertionError("the scripted engine did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def _pieces(script: Script, request: dict[str, Any], reasons: bool) -> list[dict[str, Any]]:
    """The deltas of one choice, one token each: the reasoning, then a tool call or the answer."""
    if not reasons:
        thoughts = []
    elif script.reasoning_text is None:
        thoughts = ["x"] * script.reasoning_tokens
    else:
        thoughts = [word + " " for word in script.reasoning_text.split()]
    pieces: list[dict[str, Any]] = [{"reasoning": word} for word in thoughts]
    messages = request.get("messages") or []
    offered = {tool.get("function", {}).get("name") for tool in request.get("tools") or []}
    if script.tool_call and script.tool_call[0] in offered and messages and messages[-1]["role"] != "tool":
        name, arguments = script.tool_call
        text = orjson.dumps(arguments).decode()
        half = len(text) // 2
        start = {
            "index": 0,
            "id": "call_scripted1",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        pieces.append({"tool_calls": [start]})
        pieces += [
            {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
            for part in (text[:half], text[half:])
        ]
        return pieces
    if script.answer_text is None:
        return pieces + [{"content": "x"}] * script.answer_tokens
    words = _answer(script.answer_text, request)[0].split(" ")
    return pieces + [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]


def _answer(text: str, request: dict[str, Any]) -> tuple[str, str | None]:
    """The scripted answer ("{result}": the last tool result), cut before the first of the request's
    `stop` strings it holds, and that string (vLLM's `stop_reason`), or None."""
    messages = request.get("messages") or []
    result = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "tool"), "")
    text = text.replace("{result}", result)
    stops = request.get("stop") or []
    hits = sorted(
        (text.index(stop), stop) for stop in ([stops] if isinstance(stops, str) else stops) if stop in text
    )
    return (text[: hits[0][0]].rstrip(), hits[0][1]) if hits else (text, None)


def _logprobs(delta: dict[str, Any], logprob: float) -> dict[str, Any]:
    """A token's `logprobs` as vLLM streams them."""
    text = str(delta.get("content") or delta.get("reasoning") or "")
    token = {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}
    return {"content": [token]}


def _usage(prompt: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


async def _event(send: Any, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(payload) + b"\n\n",
                "more_body": True})  # fmt: skip


async def _json(send: Any, payload: dict[str, Any], status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


# The fixtures a test module of the scripted engine takes, by name (`engine = engine_fixture()`):
# one engine and one gateway in front of it per module, with an API key named after the module.


def engine_fixture() -> Any:
    @pytest.fixture(scope="module", name="engine")
    def engine() -> Iterator[ScriptedEngine]:
        scripted = ScriptedEngine().start()
        yield scripted
        scripted.stop()

    return engine


def gateway_fixture() -> Any:
    @pytest.fixture(scope="module", name="gateway")
    def gateway(
        engine: ScriptedEngine, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[GatewayProcess]:
        name = request.module.__name__.rsplit(".", 1)[-1]
        with start_gateway(tmp_path_factory.mktemp(name), upstreams=[engine.url]) as started:
            started.api_key = started.create_key(name)
            yield started

    return gateway
