"""A fast fake engine: an OpenAI-compatible streaming server shaped like vLLM's, for benchmarks.

    python -m bench.fake_engine [--port 18300] [--tokens 64] [--model fake-reasoner]

Every stream has `--tokens` generated tokens (fewer if `max_tokens` says so): the first half as
`delta.reasoning` (as vLLM sends with a reasoning parser), the rest as `delta.content`, then a
finish chunk. `stream_options.continuous_usage_stats` puts usage on every chunk and `include_usage`
adds the final usage chunk, as vLLM does. `GET /v1/models` lists the model with `max_model_len`.

It is a bare ASGI app on uvicorn with uvloop and httptools, and every frame is serialised once at
start-up, so the engine costs as little CPU per chunk as possible and the gateway's share stands out.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
import uvicorn

PROMPT_TOKENS = 12
Frames = tuple[bytes, ...]


def _frame(payload: dict[str, Any] | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def _usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "total_tokens": PROMPT_TOKENS + completion,
        "completion_tokens": completion,
    }


class FakeEngine:
    """ASGI app; `frames[(tokens, continuous, include_usage)]` are built lazily once and reused."""

    def __init__(self, model: str, tokens: int) -> None:
        self.model = model
        self.tokens = tokens
        self.created = int(time.time())
        self._frames: dict[tuple[int, bool, bool], Frames] = {}
        self._models = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "bench",
                        "max_model_len": 4096,
                    }
                ],
            }
        )

    def frames(self, tokens: int, continuous: bool, include_usage: bool) -> Frames:
        key = (tokens, continuous, include_usage)
        cached = self._frames.get(key)
        if cached is None:
            cached = self._frames[key] = self._build(tokens, continuous, include_usage)
        return cached

    def _chunk(
        self, delta: dict[str, Any], finish: str | None, completion: int, continuous: bool
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if continuous:
            chunk["usage"] = _usage(completion)
        return chunk

    def _build(self, tokens: int, continuous: bool, include_usage: bool) -> Frames:
        frames = [_frame(self._chunk({"role": "assistant", "content": ""}, None, 0, continuous))]
        for i in range(tokens):
            delta = {"reasoning": f" r{i}"} if i < tokens // 2 else {"content": f" a{i}"}
            frames.append(_frame(self._chunk(delta, None, i + 1, continuous)))
        frames.append(_frame(self._chunk({}, "length", tokens, continuous)))
        if include_usage:
            frames.append(
                _frame(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(tokens),
                    }
                )
            )
        frames.append(_frame("[DONE]"))
        return tuple(frames)

    def completion(self, tokens: int) -> bytes:
        half = tokens // 2
        return orjson.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "logprobs": None,
                        "message": {
                            "role": "assistant",
                            "reasoning": "".join(f" r{i}" for i in range(half)),
                            "content": "".join(f" a{i}" for i in range(half, tokens)),
                        },
                    }
                ],
                "usage": _usage(tokens),
            }
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                await send({"type": event + ".complete"})
                if event == "lifespan.shutdown":
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/v1/models":
            await _respond(send, 200, self._models)
        elif method == "GET" and path == "/health":
            await _respond(send, 200, b"")
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat(receive, send)
        else:
            await _respond(send, 404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}')

    async def _chat(self, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _respond(
                send, 400, b'{"error": {"message": "invalid JSON", "type": "invalid_request_error"}}'
            )
            return
        if request.get("model") != self.model:
            await _respond(
                send,
                404,
                orjson.dumps(
                    {
                        "error": {
                            "message": f"The model `{request.get('model')}` does not exist.",
                            "type": "NotFoundError",
                        }
                    }
                ),
            )
            return
        tokens = min(
            self.tokens, int(request.get("max_tokens") or request.get("max_completion_tokens") or self.tokens)
        )
        if not request.get("stream"):
            await _respond(send, 200, self.completion(tokens))
            return
        options = request.get("stream_options") or {}
        frames = self.frames(
            tokens, bool(options.get("continuous_usage_stats")), bool(options.get("include_usage"))
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per stream")
    parser.add_argument("--model", default="fake-reasoner")
    args = parser.parse_args()
    uvicorn.run(
        FakeEngine(args.model, args.tokens),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
