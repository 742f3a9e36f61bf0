"""The gateway-overhead benchmark: direct to the engine vs through Thinkgate vs through LiteLLM's proxy.

    python -m bench.run                        # fake engine at 1/16/64 streams, then the real engine
    python -m bench.run --engines fake --duration 3 --concurrency 1,16
    python -m bench.run --real-url http://127.0.0.1:18200   # reuse a running vLLM engine

One command, one run, the same machine and upstream for every column. The load generator
(`bench.loadgen`) runs in its own process; each proxy's CPU time and RSS are read with psutil
(process and children) while it serves. LiteLLM is installed from the registry into its own venv
(`bench/.litellm-venv`, `litellm[proxy]`) on the first run, and proxies to the same upstream as an
`openai/` model with `api_base`. Results: a Markdown table on stdout and JSON under artifacts/bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from app.engine.launcher import free_port
from bench import loadgen

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / "bench" / ".litellm-venv"
LITELLM_REQUIREMENT = os.environ.get("THINKGATE_BENCH_LITELLM", "litellm[proxy]")
PROXIES = ("direct", "thinkgate", "responses", "messages", "litellm")
# Paths through Thinkgate's other front doors: the same gateway process, another API (loadgen --api).
DOORS = {"responses": "responses", "messages": "messages"}


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None, timeout_s: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited ({process.returncode}) before {url} answered\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@dataclass
class Server:
    """A process we started (or None for an engine that was already running) and its base URL."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    api_key: str | None = None
    rss_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def tree(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def start_sampling(self) -> None:
        def sample() -> None:
            while not self._stop.wait(0.2):
                self.rss_peak = max(self.rss_peak, self.rss())

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(
    name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    return Server(name, "", process, log)


def start_fake_engine(workdir: Path, tokens: int) -> Server:
    port = free_port()
    server = _spawn(
        "fake-engine",
        [sys.executable, "-m", "bench.fake_engine", "--port", str(port), "--tokens", str(tokens)],
        workdir,
    )
    server.url = f"http://127.0.0.1:{port}"
    wait_ready(f"{server.url}/v1/models", server.process, 30, server.log)
    return server


def start_real_engine(workdir: Path) -> Server:
    from app.core.config import REPO_ROOT
    from app.engine.launcher import EmbeddedEngine
    from app.profiles.profile import ProfileRegistry

    profile = ProfileRegistry.from_dir(REPO_ROOT / "models" / "profiles").by_name("thinkgate-arith")
    launcher = EmbeddedEngine(
        profile, REPO_ROOT / "models" / "thinkgate-arith", log_path=workdir / "vllm.log", kv_cache_gib=2
    )
    launcher.spawn()
    print(f"[bench] starting vLLM on {launcher.url} (about 75 s on 2 cores)", file=sys.stderr, flush=True)
    server = Server("vllm", launcher.url, launcher.process, workdir / "vllm.log")
    wait_ready(f"{server.url}/v1/models", server.process, 900, server.log)
    return server


def start_thinkgate(workdir: Path, upstream: str, root: Path = ROOT) -> Server:
    """`thinkgate serve` from `root` (another checkout for a before/after run: `python -m` puts the
    working directory first on sys.path, so its `app` package is the one that runs)."""
    port = free_port()
    database = workdir / "thinkgate.db"
    server = _spawn(
        "thinkgate",
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--no-auth",
            "--upstream",
            upstream,
            "--database-url",
            f"sqlite:///{database}",
        ],
        workdir,
        cwd=root,
    )
    server.url = f"http://127.0.0.1:{port}"
    wait_ready(f"{server.url}/ready", server.process, 120, server.log)
    return server


def ensure_litellm() -> Path:
    """`bench/.litellm-venv` with LiteLLM's proxy, installed from the registry on first use."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        print(
            f"[bench] installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (first run only)", file=sys.stderr
        )
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", LITELLM_REQUIREMENT], check=True
        )
    return binary


def litellm_version() -> str:
    result = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


def start_litellm(workdir: Path, upstream: str, model: str) -> Server:
    binary = ensure_litellm()
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
    )
    import secrets

    master_key = f"sk-{secrets.token_hex(24)}"  # LiteLLM refuses to start without one
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": master_key}
    server = _spawn(
        "litellm",
        [
            str(binary),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir,
        env,
    )
    server.url, server.api_key = f"http://127.0.0.1:{port}", master_key
    wait_ready(f"{server.url}/health/liveliness", server.process, 180, server.log)
    return server


def load(
    url: str,
    model: str,
    concurrency: int,
    duration: float,
    warmup: float,
    max_tokens: int | None,
    extra: dict[str, Any] | None,
    server: Server | None,
    api: str = "chat",
) -> dict[str, Any]:
    """One load-generator run; the server's CPU is read over the measured window only."""
    command = loadgen.command(
        url,
        model,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        max_tokens=max_tokens,
        api_key=server.api_key if server else None,
        extra=extra,
        api=api,
    )
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(warmup)
    cpu_start = server.cpu_seconds() if server else 0.0
    time.sleep(duration)
    cpu = (server.cpu_seconds() - cpu_start) if server else 0.0
    out, err = process.communicate(timeout=duration + 600)
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["cpu_s"] = cpu if server else None
    return result


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of one point: totals over all rounds, percentiles over all samples."""
    seconds = sum(r["seconds"] for r in runs)
    requests = sum(r["requests"] for r in runs)
    ttft = sorted(t for r in runs for t in r["ttft_ms"])
    cpu = [r["cpu_s"] for r in runs if r["cpu_s"] is not None]
    return {
        "concurrency": runs[0]["concurrency"],
        "rounds": len(runs),
        "seconds": seconds,
        "requests": requests,
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
        "requests_per_s": requests / seconds,
        "chunks_per_s": sum(r["chunks"] for r in runs) / seconds,
        "ttft_p50_ms": statistics.median(ttft) if ttft else None,
        "ttft_p99_ms": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))] if ttft else None,
        "cpu_s_per_1k": sum(cpu) / requests * 1000 if cpu and requests else None,
        "per_round_chunks_per_s": [r["chunks_per_s"] for r in runs],
    }


@dataclass
class Case:
    engine: str  # "fake" or "vllm"
    model: str
    concurrency: list[int]
    max_tokens: int | None
    extra: dict[str, Any] | None


def run_case(
    case: Case,
    upstream: Server,
    proxies: list[str],
    duration: float,
    warmup: float,
    workdir: Path,
    baseline: Path | None = None,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    servers: dict[str, Server | None] = {"direct": None}
    started: list[Server] = []
    try:
        if "thinkgate" in proxies or any(door in proxies for door in DOORS):
            servers["thinkgate"] = start_thinkgate(workdir / f"{case.engine}-thinkgate", upstream.url)
            for door in DOORS:
                servers[door] = servers["thinkgate"]
        if baseline is not None and "baseline" in proxies:
            servers["baseline"] = start_thinkgate(workdir / f"{case.engine}-baseline", upstream.url, baseline)
        if "litellm" in proxies:
            servers["litellm"] = start_litellm(workdir / f"{case.engine}-litellm", upstream.url, case.model)
        started = list({id(s): s for s in servers.values() if s is not None}.values())
        for running in started:
            running.start_sampling()
        rows = []
        for concurrency in case.concurrency:
            # Rounds, each path once per round in a rotating order, so a change in the machine's
            # background load during the point hits every path alike.
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in proxies}
            for round_ in range(rounds):
                for name in proxies[round_ % len(proxies) :] + proxies[: round_ % len(proxies)]:
                    proxy = servers[name]
                    url = upstream.url if proxy is None else proxy.url
                    print(f"[bench] {case.engine} c={concurrency} {name} round {round_ + 1}", file=sys.stderr)
                    api = DOORS.get(name, "chat")
                    runs[name].append(
                        load(
                            url,
                            case.model,
                            concurrency,
                            duration,
                            warmup,
                            case.max_tokens,
                            case.extra,
                            proxy,
                            api,
                        )
                    )
            for name in proxies:
                rows.append({**merge(runs[name]), "engine": case.engine, "proxy": name})
        for row in rows:
            proxy = servers[row["proxy"]]
            row["rss_peak_mib"] = proxy.rss_peak / 2**20 if proxy else None
        return rows
    finally:
        for running in started:
            running.stop()


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if not value or not base else f"{value / base:.2f}×"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| engine | streams | path | req/s | chunks/s | ×direct | TTFT p50 ms | +ms vs direct | TTFT p99 ms "
        "| CPU s / 1k req | peak RSS MiB | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct = {(r["engine"], r["concurrency"]): r for r in rows if r["proxy"] == "direct"}
    for row in rows:
        base = direct.get((row["engine"], row["concurrency"]))
        added = None
        if (
            base
            and row["proxy"] != "direct"
            and row["ttft_p50_ms"] is not None
            and base["ttft_p50_ms"] is not None
        ):
            added = row["ttft_p50_ms"] - base["ttft_p50_ms"]
        cells = [
            row["engine"],
            row["concurrency"],
            row["proxy"],
            _fmt(row["requests_per_s"]),
            _fmt(row["chunks_per_s"], 0),
            _ratio(row["chunks_per_s"], base["chunks_per_s"] if base else None),
            _fmt(row["ttft_p50_ms"], 2),
            "-" if added is None else f"{added:+.2f}",
            _fmt(row["ttft_p99_ms"], 2),
            _fmt(row["cpu_s_per_1k"], 2),
            _fmt(row.get("rss_peak_mib"), 0),
            row["errors"],
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked against this run."""
    by = {(r["engine"], r["concurrency"], r["proxy"]): r for r in rows}
    checks: list[str] = []

    def get(engine: str, c: int, proxy: str, key: str) -> float | None:
        row = by.get((engine, c, proxy))
        return None if row is None else row.get(key)

    fake_c = sorted({r["concurrency"] for r in rows if r["engine"] == "fake"})
    if fake_c:
        top = fake_c[-1]
        tg, ll = get("fake", top, "thinkgate", "chunks_per_s"), get("fake", top, "litellm", "chunks_per_s")
        if tg and ll:
            checks.append(
                f"Thinkgate ≥10× LiteLLM chunks/s (fake, {top} streams): {tg / ll:.1f}× "
                f"{'MET' if tg >= 10 * ll else 'NOT MET'}"
            )
        direct = get("fake", top, "direct", "chunks_per_s")
        d1 = get("fake", 1, "direct", "ttft_p50_ms")
        for door in ("thinkgate", *DOORS):
            name = "Thinkgate" if door == "thinkgate" else f"Thinkgate's {door} door"
            chunks = get("fake", top, door, "chunks_per_s")
            if chunks and direct:
                checks.append(
                    f"{name} ≥50% of direct chunks/s (fake, {top} streams): {100 * chunks / direct:.0f}% "
                    f"{'MET' if chunks >= 0.5 * direct else 'NOT MET'}"
                )
            ttft = get("fake", 1, door, "ttft_p50_ms")
            if ttft is not None and d1 is not None:
                checks.append(
                    f"{name} adds <1 ms median TTFT at 1 stream (fake): +{ttft - d1:.2f} ms "
                    f"{'MET' if ttft - d1 < 1 else 'NOT MET'}"
                )
    for c in sorted({r["concurrency"] for r in rows if r["engine"] == "vllm"}):
        tg, direct = get("vllm", c, "thinkgate", "chunks_per_s"), get("vllm", c, "direct", "chunks_per_s")
        if tg and direct:
            checks.append(
                f"Thinkgate ≥98% of direct throughput (vLLM, {c} streams): {100 * tg / direct:.1f}% "
                f"{'MET' if tg >= 0.98 * direct else 'NOT MET'}"
            )
    return checks


@contextlib.contextmanager
def real_engine(url: str | None, workdir: Path) -> Iterator[Server]:
    if url:
        yield Server("vllm", url.rstrip("/"))
        return
    server = start_real_engine(workdir)
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engines", default="fake,vllm", help="fake, vllm or both (comma-separated)")
    parser.add_argument(
        "--proxies",
        default=",".join(PROXIES),
        help="direct, thinkgate (Chat Completions), responses, messages (its other doors), litellm",
    )
    parser.add_argument("--concurrency", default="1,16,64", help="concurrent streams for the fake engine")
    parser.add_argument("--real-concurrency", default="1,4", help="concurrent streams for the real engine")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per point (paths rotate within each)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each point")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per fake stream")
    parser.add_argument("--real-tokens", type=int, default=16, help="max_tokens per real-engine stream")
    parser.add_argument(
        "--real-url",
        default=os.environ.get("THINKGATE_BENCH_ENGINE_URL"),
        help="a running vLLM server to reuse (default: start one on the bundled model)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "artifacts" / "bench", help="folder for the JSON results"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of Thinkgate, run as the 'baseline' path (before/after)",
    )
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    proxies = [p for p in args.proxies.split(",") if p]
    if args.baseline:
        proxies.insert(proxies.index("thinkgate") if "thinkgate" in proxies else len(proxies), "baseline")
    if "litellm" in proxies:
        ensure_litellm()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="thinkgate-bench-") as tmp:
        workdir = Path(tmp)
        for name in proxies:
            if name != "direct":
                for engine in engines:
                    (workdir / f"{engine}-{name}").mkdir()
        if "fake" in engines:
            fake = start_fake_engine(workdir, args.tokens)
            fake.start_sampling()
            try:
                case = Case(
                    "fake", "fake-reasoner", [int(c) for c in args.concurrency.split(",")], None, None
                )
                rows += run_case(
                    case, fake, proxies, args.duration, args.warmup, workdir, args.baseline, args.rounds
                )
            finally:
                fake.stop()
        if "vllm" in engines:
            with real_engine(args.real_url, workdir) as vllm:
                model = httpx.get(f"{vllm.url}/v1/models", timeout=10).json()["data"][0]["id"]
                # Fixed-length streams, so every path generates the same number of tokens.
                # Thinking off on both paths (Thinkgate reads the same switch as its short mode).
                extra = {
                    "ignore_eos": True,
                    "temperature": 0,
                    "chat_template_kwargs": {"enable_thinking": False},
                }
                case = Case(
                    "vllm", model, [int(c) for c in args.real_concurrency.split(",")], args.real_tokens, extra
                )
                chat_paths = [p for p in proxies if p not in DOORS]  # the doors: on the fake engine
                rows += run_case(
                    case, vllm, chat_paths, args.duration, args.warmup, workdir, args.baseline, args.rounds
                )
    report = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": psutil.cpu_count(),
        "load_average": os.getloadavg(),
        "litellm": litellm_version() if "litellm" in proxies else None,
        "rows": rows,
        "verdict": verdict(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(table(rows))
    print()
    for line in report["verdict"]:
        print(f"- {line}")
    print(
        f"\n(LiteLLM {report['litellm']}; {report['cpus']} CPUs; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in report['load_average'])}; JSON: {path})"
    )
    errors = sum(row["errors"] for row in rows)
    return 1 if errors and all(row["requests"] == 0 for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
