"""Load generator: N concurrent streaming chat requests in a loop, for a fixed time; JSON on stdout.

    python -m bench.loadgen --url http://127.0.0.1:8000 --model M --concurrency 16 --duration 10

Runs in its own process (aiohttp on uvloop), so its CPU is not the servers'. A chunk is one SSE
event other than `[DONE]`; time to first chunk is from sending the request to its first body bytes.
Only what happens inside the measured window (after `--warmup` seconds) is counted.
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


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], tally: Tally
) -> None:
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
) -> dict[str, object]:
    """`rate`: requests per second over all workers (paced, open loop); None: each worker back to back."""
    payload: dict[str, object] = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "What is 1234 + 5678?"}],
    }
    if max_tokens:
        payload["max_tokens"] = max_tokens
    payload.update(extra or {})
    body = orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    tally = Tally(window_start=start + warmup, window_end=start + warmup + duration)
    endpoint = url.rstrip("/") + "/v1/chat/completions"
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
                await _one(session, endpoint, body, headers, tally)

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
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
