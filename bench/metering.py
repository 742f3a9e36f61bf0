"""What the ledger costs: the same load through Thinkgate with metering on and off.

    python -m bench.metering                      # 64 streams, 3 rounds of 8 s each way
    python -m bench.metering --concurrency 64 --duration 5 --rounds 2 --tokens 64

Upstream is the fast fake engine (`bench.fake_engine`), so the gateway's own work dominates. Both
gateways authenticate with a real API key that has a budget, rpm and tpm, so "on" exercises every
metering step of a request: rate-limit upsert, reservation + open record, checkpoints, settlement
and the rate-window correction. "Off" is the same gateway started with `--no-metering`. Each round
runs both sides, which one first alternating from round to round, to spread out the noise of a
shared machine; each side's median is reported. The gateway's CPU time per request (psutil, over the
measured windows) is reported too: on a shared 2-core machine it varies less than throughput does,
and while the gateway is the bottleneck, throughput follows it (on/off throughput ≈ off/on CPU).
Results: a Markdown table on stdout and JSON in artifacts/bench/metering.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import ROOT, Server, _spawn, free_port, load, start_fake_engine, wait_ready

MODEL = "fake-reasoner"


def start_gateway(
    workdir: Path, upstream: str, metering: bool, database_url: str | None
) -> tuple[Server, str]:
    """A Thinkgate process on a fresh SQLite ledger (or the given database), and a limited key's secret."""
    database = database_url or f"sqlite:///{workdir / ('on' if metering else 'off')}.db"
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "--database-url",
            database,
            "keys",
            "create",
            "--name",
            "bench",
            "--budget",
            "1000000",
            "--rpm",
            "10000000",
            "--tpm",
            "2000000000",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    secret = created.stdout.strip().splitlines()[-1]
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--database-url",
        database,
    ]
    if not metering:
        command.append("--no-metering")
    server = _spawn(f"thinkgate-{'on' if metering else 'off'}", command, workdir)
    server.url = f"http://127.0.0.1:{port}"
    server.api_key = secret
    wait_ready(f"{server.url}/ready", server.process, 120, server.log)
    return server, secret


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    summary = {
        name: statistics.median(run[name] for run in runs)
        for name in ("requests_per_s", "chunks_per_s", "ttft_p50_ms", "ttft_p99_ms")
    }
    summary["cpu_ms_per_request"] = sum(r["cpu_s"] for r in runs) / sum(r["requests"] for r in runs) * 1000
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per stream")
    parser.add_argument("--database-url", help="e.g. postgresql://user@host/db (default: a SQLite file each)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench" / "metering.json")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="thinkgate-bench-metering-"))
    engine = start_fake_engine(workdir, args.tokens)
    gateways: dict[str, tuple[Server, str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        gateways = {
            side: start_gateway(workdir, engine.url, side == "on", args.database_url)
            for side in ("off", "on")
        }
        for round_ in range(args.rounds):
            # Which side goes first alternates too: a round's second run must not always be "on".
            for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                server, _ = gateways[side]
                result = load(
                    server.url, MODEL, args.concurrency, args.duration, args.warmup, args.tokens, None, server
                )
                if result["errors"]:
                    raise RuntimeError(f"{result['errors']} failed requests, first: {result['first_error']}")
                result.pop("ttft_ms", None)  # the samples: the JSON keeps the percentiles
                runs[side].append(result)
                print(
                    f"[bench] round {round_ + 1} metering {side}: {result['requests_per_s']:.1f} req/s, "
                    f"TTFT p50 {result['ttft_p50_ms']:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for server, _ in gateways.values():
            server.stop()
        engine.stop()

    off, on = summarise(runs["off"]), summarise(runs["on"])
    report = {
        "concurrency": args.concurrency,
        "tokens_per_stream": args.tokens,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "database": "sqlite" if not args.database_url else args.database_url.split(":", 1)[0],
        "off": off,
        "on": on,
        "throughput_ratio_on_off": on["requests_per_s"] / off["requests_per_s"],
        "cpu_ratio_off_on": off["cpu_ms_per_request"] / on["cpu_ms_per_request"],
        "added_ttft_p50_ms": on["ttft_p50_ms"] - off["ttft_p50_ms"],
        # Little's law at fixed concurrency: mean time a request spends in the system.
        "added_mean_latency_ms": (
            args.concurrency / on["requests_per_s"] - args.concurrency / off["requests_per_s"]
        )
        * 1000,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        f"Metering on vs off ({report['database']}): {args.concurrency} concurrent streams of {args.tokens} "
        f"tokens, fake engine, median of {args.rounds} rounds of {args.duration:g} s\n"
    )
    print("| metering | requests/s | chunks/s | TTFT p50 ms | TTFT p99 ms | gateway CPU ms / request |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, values in (("off", off), ("on", on)):
        print(
            f"| {side} | {values['requests_per_s']:.1f} | {values['chunks_per_s']:.0f} | "
            f"{values['ttft_p50_ms']:.2f} | {values['ttft_p99_ms']:.2f} | "
            f"{values['cpu_ms_per_request']:.3f} |"
        )
    print(
        f"\nthroughput on/off: {report['throughput_ratio_on_off']:.3f} "
        f"({(1 - report['throughput_ratio_on_off']) * 100:+.1f}% loss); gateway CPU per request "
        f"off/on: {report['cpu_ratio_off_on']:.3f} ({(1 - report['cpu_ratio_off_on']) * 100:+.1f}%)"
    )
    print(
        f"added median TTFT: {report['added_ttft_p50_ms']:+.2f} ms; "
        f"added mean request latency: {report['added_mean_latency_ms']:+.2f} ms"
    )
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
