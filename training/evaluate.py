"""``make eval``: held-out problems through the product (gateway + real engine) via the OpenAI API.

    python -m training.evaluate                          # starts `thinkgate serve` with the embedded engine
    python -m training.evaluate --url http://127.0.0.1:8000 --api-key sk-...   # an already running gateway

Asks every cell (mode x input kind x split) ``--n`` problems, and prints pass@1, mean reasoning tokens
per answer and answer latency. The mode is chosen with the gateway's ``reasoning_mode`` field.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.engine.launcher import free_port
from training import examples as E
from training import problems as pb
from training.inproc_eval import ALL_CELLS, Cell, held_out

REPO = Path(__file__).resolve().parent.parent
GATEWAY_SEED = 2026
# Targets from the issue; a cell missing from this map has none.
TARGETS: dict[str, float] = {"long/text/hard": 0.95, "long/image/hard": 0.85, "short/text/easy": 0.95}


@dataclass
class Answer:
    correct: bool
    reasoning_tokens: int
    latency_s: float
    content: str
    error: str = ""


def image_data_url(ex: E.Example) -> str:
    assert ex.image is not None
    buf = io.BytesIO()
    ex.image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_body(ex: E.Example, mode: str, model: str, max_tokens: int) -> dict[str, object]:
    if ex.image is None:
        content: object = ex.user_text
    else:
        parts = [
            {"type": "image_url", "image_url": {"url": image_data_url(ex)}},
            {"type": "text", "text": ex.user_text},
        ]
        content = parts if ex.image_first else parts[::-1]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "reasoning_mode": mode,
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def ask(
    client: httpx.Client, ex: E.Example, mode: str, model: str = "thinkgate-arith", max_tokens: int = 768
) -> Answer:
    assert ex.problem is not None
    t0 = time.monotonic()
    try:
        r = client.post("/v1/chat/completions", json=request_body(ex, mode, model, max_tokens))
    except httpx.HTTPError as exc:
        return Answer(False, 0, time.monotonic() - t0, "", f"{type(exc).__name__}: {exc}")
    latency = time.monotonic() - t0
    if r.status_code != 200:
        return Answer(False, 0, latency, "", f"HTTP {r.status_code}: {r.text[:200]}")
    body = r.json()
    content = body["choices"][0]["message"].get("content") or ""
    details = (body.get("usage") or {}).get("completion_tokens_details") or {}
    reasoning = int(details.get("reasoning_tokens") or 0)
    return Answer(pb.final_integer(content) == ex.problem.result, reasoning, latency, content)


def evaluate_cells(
    client: httpx.Client,
    cells: list[Cell],
    n: int,
    seed: int = GATEWAY_SEED,
    concurrency: int = 8,
    model: str = "thinkgate-arith",
) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for cell in cells:
            exs = held_out(cell, n, seed)
            t0 = time.monotonic()
            answers = list(pool.map(lambda ex, mode=cell[0]: ask(client, ex, mode, model), exs))
            errors = [a.error for a in answers if a.error]
            key = "/".join(cell)
            table[key] = {
                "n": len(answers),
                "pass1": sum(a.correct for a in answers) / len(answers),
                "reasoning_tokens": statistics.mean(a.reasoning_tokens for a in answers),
                "latency_mean_s": statistics.mean(a.latency_s for a in answers),
                "latency_p50_s": statistics.median(a.latency_s for a in answers),
                "errors": len(errors),
            }
            print(
                f"[eval] {key}: pass@1 {table[key]['pass1']:.1%} ({time.monotonic() - t0:.0f} s)"
                + (f", {len(errors)} errors, first: {errors[0]}" if errors else ""),
                flush=True,
            )
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    lines = [
        "| mode | input | split | n | pass@1 | mean reasoning tokens | latency mean (s) | latency p50 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, v in table.items():
        mode, kind, split = key.split("/")
        lines.append(
            f"| {mode} | {kind} | {split} | {v['n']:.0f} | {v['pass1']:.1%} | "
            f"{v['reasoning_tokens']:.0f} | {v['latency_mean_s']:.2f} | {v['latency_p50_s']:.2f} |"
        )
    return "\n".join(lines)


def target_report(table: dict[str, dict[str, float]]) -> list[str]:
    out = []
    for key, target in TARGETS.items():
        if key in table:
            got = table[key]["pass1"]
            out.append(f"{key}: {got:.1%} (target {target:.0%}) {'met' if got >= target else 'NOT met'}")
    for kind in ("text", "image"):
        long_, short = table.get(f"long/{kind}/hard"), table.get(f"short/{kind}/hard")
        if long_ and short:
            gap = long_["pass1"] - short["pass1"]
            out.append(f"hard {kind}: long - short = {gap * 100:+.0f} points (target +20)")
    return out


@contextmanager
def embedded_gateway(workdir: Path, timeout_s: float = 900.0) -> Iterator[str]:
    """`thinkgate serve` with its embedded engine on the bundled model; yields the gateway's base URL."""
    port = free_port()
    log = (workdir / "gateway.log").open("ab")
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--no-auth",
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{workdir / 'thinkgate.db'}",
        "--engine-log",
        str(workdir / "engine.log"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "THINKGATE_HEALTH_INTERVAL_S": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        next_note = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({proc.returncode}); see {workdir / 'gateway.log'}")
            if elapsed > timeout_s:
                raise RuntimeError(f"engine not ready after {timeout_s:.0f} s; see {workdir / 'engine.log'}")
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    print(f"[eval] gateway and engine ready after {elapsed:.0f} s", flush=True)
                    break
            except httpx.HTTPError:
                pass
            if elapsed >= next_note:
                print(f"[eval] waiting for the gateway's embedded engine… {elapsed:.0f} s", flush=True)
                next_note += 15
            time.sleep(1)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--url", help="base URL of a running gateway (default: start one with the embedded engine)"
    )
    ap.add_argument("--api-key", default=os.environ.get("THINKGATE_API_KEY", ""))
    ap.add_argument("--n", type=int, default=50, help="problems per cell")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=GATEWAY_SEED)
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args(argv)

    def run(base: str) -> dict[str, dict[str, float]]:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            return evaluate_cells(client, ALL_CELLS, args.n, args.seed, args.concurrency)

    if args.url:
        table = run(args.url.rstrip("/"))
    else:
        with (
            tempfile.TemporaryDirectory(prefix="thinkgate-eval-") as tmp,
            embedded_gateway(Path(tmp)) as base,
        ):
            table = run(base)
    print(format_table(table))
    for line in target_report(table):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
