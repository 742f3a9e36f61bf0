"""Load generator: N concurrent streaming requests in a loop, for a fixed time; JSON on stdout.

    python -m bench.loadgen --url http://127.0.0.1:8000 --model M --concurrency 16 --duration 10
                            [--api chat|responses|messages]

Runs in its own process (aiohttp on uvloop), so its CPU is not the servers'. On Chat Completions
a chunk is one SSE event other than `[DONE]`, and the time to the first chunk runs from sending the
request to its first body bytes. On the Responses and Messages APIs, whose streams open with events
that carry no token (`response.created`, `message_start`), a chunk is one delta event (an `event:`
line ending in `delta`) and the time to the first chunk is to the first of those. Only what happens
inside the measured window (after `--warmup` seconds) is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Tally:
    window_start: float = 0.0
    window_end: float = 0.0
    requests: int = 0
    errors: int = 0
    chunks: int = 0
    ttft_s: list[float] = field(default_factory=list)
    first_error: str | None = None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# The path of each API, and the event that ends a stream of it (None: Chat Completions' [DONE]).
ENDPOINTS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
# The events that end a stream (a Responses stream that stops at its token bound is incomplete).
LAST_EVENTS = {
    "responses": (b"event: response.completed\n", b"event: response.incomplete\n"),
    "messages": (b"event: message_stop\n",),
}
DELTA = b"delta\n"


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally, api: str
) -> None:
    if api != "chat":
        await _one_event_stream(session, url, body, headers, tally, LAST_EVENTS[api])
        return
    started = time.perf_counter()
    measured = started >= tally.window_start
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            end = b""
            first = True
            async for data in response.content.iter_any():
                now = time.perf_counter()
                if first:
                    first = False
                    if measured:
                        tally.ttft_s.append(now - started)
                # An event ends with a blank line; count separators, including one split across reads.
                seen = (end[-1:] + data[:1]).count(b"\n\n") + data.count(b"\n\n")
                if tally.window_start <= now <= tally.window_end:
                    tally.chunks += seen
                end = (end + data)[-16:]
            if b"[DONE]" not in end:
                raise RuntimeError("stream ended without [DONE]")
            if tally.window_start <= time.perf_counter() <= tally.window_end:
                tally.chunks -= 1  # the [DONE] event
                tally.requests += 1
    except Exception as exc:
        if measured:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"


async def _one_event_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    tally: Tally,
    last_events: tuple[bytes, ...],
) -> None:
    """One stream of an API with named events: chunks are its delta events."""
    started = time.perf_counter()
    measured = started >= tally.window_start
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:200]!r}")
            # The last bytes of the previous read, one short of each marker: a marker split across two
            # reads is whole in tail + data, and one already counted is never whole in the tail alone.
            delta_tail = event_tail = b""
            first = True
            finished = False
            async for data in response.content.iter_any():
                now = time.perf_counter()
                seen = (delta_tail + data).count(DELTA)
                if seen and first:
                    first = False
                    if measured:
                        tally.ttft_s.append(now - started)
                if tally.window_start <= now <= tally.window_end:
                    tally.chunks += seen
                finished = finished or any(event in event_tail + data for event in last_events)
                delta_tail = (delta_tail + data)[-(len(DELTA) - 1) :]
                event_tail = (event_tail + data)[-(max(map(len, last_events)) - 1) :]
            if not finished:
                raise RuntimeError(f"stream ended without {last_events[0].decode().strip()}")
            if tally.window_start <= time.perf_counter() <= tally.window_end:
                tally.requests += 1
    except Exception as exc:
        if measured:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"


def payload_for(api: str, model: str, max_tokens: int | None) -> dict[str, object]:
    """The same question on each API, streamed."""
    question = "What is 1234 + 5678?"
    if api == "responses":
        body: dict[str, object] = {"model": model, "stream": True, "input": question}
        if max_tokens:
            body["max_output_tokens"] = max_tokens
        return body
    messages = [{"role": "user", "content": question}]
    if api == "messages":
        return {"model": model, "stream": True, "messages": messages, "max_tokens": max_tokens or 1024}
    body = {"model": model, "stream": True, "messages": messages}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


async def run(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    warmup: float,
    api_key: str | None,
    max_tokens: int | None,
    extra: dict[str, object] | None = None,
    rate: float | None = None,
    api: str = "chat",
) -> dict[str, object]:
    """`rate`: requests per second over all workers (paced, open loop); None: each worker back to back."""
    payload = payload_for(api, model, max_tokens)
    payload.update(extra or {})
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    tally = Tally(window_start=start + warmup, window_end=start + warmup + duration)
    endpoint = url.rstrip("/") + ENDPOINTS[api]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(i: int) -> None:
            interval = concurrency / rate if rate else 0.0
            due = start + i * interval / concurrency  # workers staggered across one interval
            while time.perf_counter() < tally.window_end:
                if interval:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += interval
                await _one(session, endpoint, body, headers, tally, api)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    seconds = tally.window_end - tally.window_start
    ttft = tally.ttft_s
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests": tally.requests,
        "chunks": tally.chunks,
        "ttft_ms": [round(t * 1000, 3) for t in ttft],
        "errors": tally.errors,
        "first_error": tally.first_error,
        "requests_per_s": tally.requests / seconds,
        "chunks_per_s": tally.chunks / seconds,
        "ttft_p50_ms": None if not ttft else statistics.median(ttft) * 1000,
        "ttft_p99_ms": None if not ttft else (_percentile(ttft, 0.99) or 0) * 1000,
    }


def command(
    url: str,
    model: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    max_tokens: int | None = None,
    api_key: str | None = None,
    extra: dict[str, Any] | None = None,
    rate: float | None = None,
    api: str = "chat",
) -> list[str]:
    """The command line that runs this load generator in its own process (as the benches do)."""
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--model", model]
    args += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
    if max_tokens:
        args += ["--max-tokens", str(max_tokens)]
    if extra:
        args += ["--extra", json.dumps(extra)]
    if api_key:
        args += ["--api-key", api_key]
    if rate:
        args += ["--rate", str(rate)]
    if api != "chat":
        args += ["--api", api]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--api-key")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--extra", type=json.loads, help="JSON object merged into each request body")
    parser.add_argument("--rate", type=float, help="requests per second in all (default: back to back)")
    parser.add_argument("--api", choices=sorted(ENDPOINTS), default="chat", help="which front door")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(
            args.url,
            args.model,
            args.concurrency,
            args.duration,
            args.warmup,
            args.api_key,
            args.max_tokens,
            args.extra,
            args.rate,
            args.api,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
