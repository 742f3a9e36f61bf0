"""Auto mode by measurement: what each way of choosing the reasoning mode gets right, and costs, on a
held-out mixed set sent through the gateway to the bundled model.

    .venv/bin/python -m bench.router --n 40        # starts `thinkgate serve` with its embedded engine
    .venv/bin/python -m bench.router --url http://127.0.0.1:8000 --api-key sk-...   # a running gateway

The set (bench/router_set.py): `--n` prompts in each of seven categories: easy and hard problems as
text and as images, out-of-domain prompts, chat turns, and the background tasks Open WebUI sends
around a chat turn. Three passes through the gateway's `/v1/chat/completions`, streamed: every prompt
in short mode with the answer's token log-probabilities, in long mode, and in auto mode as a client
sends it (no mode: what is shipped). Then every strategy is scored (bench/router_report.py):
always-long, always-short, the rules, escalation and rules + escalation at every threshold, both
confidence measures (the answer's lowest token log-probability, and their mean), and the oracle
bound. The target: auto within 2 points of always-long's accuracy at no more than half its output
tokens. The tables go to stdout and to docs/router.md's "Measured" section (`--no-docs`: stdout
only), every pass to artifacts/bench/router-n<n>-seed<seed>.json as it ends (`--resume` takes the
short and long passes from there: after a change of the threshold, only the auto pass runs again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from app.metering.prices import TokenCounts
from app.pipeline.escalate import answer_logprobs
from app.profiles.profile import ProfileRegistry
from bench import router_report as report
from bench.router_report import Reply, Row, Scorer
from bench.router_set import Item, mixed_set
from training.evaluate import embedded_gateway

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "router.md"
ARTIFACTS = ROOT / "artifacts" / "bench"
BEGIN, END = "<!-- bench.router: begin -->", "<!-- bench.router: end -->"
TARGET_POINTS, TARGET_SHARE = 0.02, 0.5


def progress(message: str) -> None:
    print(f"[router] {message}", file=sys.stderr, flush=True)


def ask(client: httpx.Client, item: Item, model: str, mode: str | None, logprobs: bool) -> Reply:
    """One prompt through the gateway, streamed: the answer, its mode and reason, its usage."""
    body: dict[str, Any] = {"model": model, "messages": item.messages, "stream": True,
                            "stream_options": {"include_usage": True}, **item.extra}  # fmt: skip
    if mode is not None:
        body["reasoning_mode"] = mode
    if logprobs:
        body["logprobs"] = True
    reply = Reply()
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                reply.error = f"HTTP {response.status_code}: {response.read().decode()[:200]}"
                return reply
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    _read_chunk(json.loads(line[6:]), reply)
    except httpx.HTTPError as exc:
        reply.error = f"{type(exc).__name__}: {exc}"
    return reply


def _read_chunk(chunk: dict[str, Any], reply: Reply) -> None:
    if "error" in chunk:
        reply.error = str(chunk["error"].get("message"))[:200]
        return
    reply.mode = chunk.get("reasoning_mode", reply.mode)
    reply.reason = chunk.get("reasoning_mode_reason", reply.reason)
    for choice in chunk.get("choices") or ():
        reply.answer += (choice.get("delta") or {}).get("content") or ""
    reply.logprobs += answer_logprobs(chunk)
    usage = chunk.get("usage")
    if usage:
        prompt_details = usage.get("prompt_tokens_details") or {}
        details = usage.get("completion_tokens_details") or {}
        reasoning = int(details.get("reasoning_tokens") or 0)
        reply.counts = TokenCounts(
            prompt=int(usage["prompt_tokens"]),
            image=int(prompt_details.get("image_tokens") or 0),
            cached=int(prompt_details.get("cached_tokens") or 0),
            reasoning=reasoning,
            answer=int(usage["completion_tokens"]) - reasoning,
        )
        reply.cost_micros = round(float(usage.get("cost") or 0) * 1_000_000)


def run_pass(
    client: httpx.Client, items: list[Item], model: str, mode: str | None, concurrency: int
) -> list[Reply]:
    name = mode or "auto"
    started, done, replies = time.monotonic(), 0, []
    with ThreadPoolExecutor(concurrency) as pool:
        for reply in pool.map(lambda item: ask(client, item, model, mode, mode == "short"), items):
            replies.append(reply)
            done += 1
            if done % 20 == 0 or done == len(items):
                progress(f"{name}: {done}/{len(items)} ({time.monotonic() - started:.0f} s)")
    errors = [r.error for r in replies if r.error]
    if errors:
        progress(f"{name}: {len(errors)} errors, the first: {errors[0]}")
    return replies


def agreement(scorer: Scorer, live: list[Reply], threshold: float | None) -> str:
    """How the live auto pass compares with its simulation from the short and long passes."""
    if threshold is None:
        simulated = scorer.strategy("rules")
    else:
        simulated = scorer.strategy("rules + escalation", "min", threshold)
    same_mode = sum(s.mode == r.mode for s, r in zip(simulated.scores, live, strict=True))
    same_tokens = sum(s.tokens == r.counts.completion for s, r in zip(simulated.scores, live, strict=True))
    return (
        f"The live auto pass matches its simulation ({simulated.name}) on {same_mode}/{len(live)} "
        f"modes and {same_tokens}/{len(live)} output-token counts (greedy decoding; the engine's "
        "batching can change a token now and then)."
    )


def verdict(rows: list[Row], long: Row) -> list[str]:
    lines = []
    for row in rows:
        close = row.accuracy >= long.accuracy - TARGET_POINTS - 1e-9
        cheap = row.tokens <= TARGET_SHARE * long.tokens
        state = "met" if close and cheap else "NOT met"
        lines.append(
            f"- {row.name}: {row.accuracy - long.accuracy:+.1%} accuracy against always-long at "
            f"{row.tokens / long.tokens:.0%} of its output tokens: target {state}"
        )
    return lines


def render(scorer: Scorer, live: list[Reply], threshold: float | None, header: str) -> str:
    long, short, rules = (scorer.strategy(name) for name in ("always long", "always short", "rules"))
    # Each escalation strategy at its best threshold: the fewest tokens within 2 points of the better
    # of always-long and the rules (always-long answers the background tasks in the wrong mode).
    bar = max(long.accuracy, rules.accuracy) - TARGET_POINTS
    tuned = [scorer.best(name, metric, bar) for name in ("escalation", "rules + escalation")
             for metric in report.METRICS]  # fmt: skip
    shipped = [report.live_row(scorer.items, live)] if live else []
    rows = [long, short, scorer.strategy("rules, UI tasks long"), rules, *tuned]
    if threshold is not None:
        rows.append(scorer.strategy("rules + escalation", "min", threshold))
    rows += [scorer.oracle(), *shipped]
    auroc = {metric: scorer.auroc(metric) for metric in report.METRICS}
    separation = ", ".join(f"{m}: {v:.2f}" if v is not None else f"{m}: -" for m, v in auroc.items())
    parts = [
        header,
        "",
        report.table(rows, long),
        "",
        "The escalation rows are each at the threshold with the fewest output tokens within 2 points of "
        "the better of always-long and the rules (the frontier below has every threshold). Costs are as "
        "billed: a turn is billed in the mode that answered it, an escalated one with both attempts.",
        "",
        "Target: within 2 points of always-long's accuracy at no more than 50 % of its output tokens.",
        *verdict([row for row in rows if row is not long], long),
        "",
        "By category (share right, mean output tokens):",
        "",
        report.by_category(scorer.items, [long, short, rules, *shipped]),
        "",
        "How well the short answer's confidence tells right from wrong on problems (AUROC: the chance "
        f"that a right answer scores above a wrong one): {separation}.",
        "",
        "The frontier (accuracy, mean output tokens) by threshold:",
        "",
        report.frontier(scorer),
    ]
    if live:
        parts += ["", agreement(scorer, live, threshold)]
    return "\n".join(parts) + "\n"


def write_docs(section: str, path: Path = DOCS) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} … {END} section to write into")
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{section}{END}{rest.split(END, 1)[1]}", encoding="utf-8")


class Saved:
    """The passes of one set (`--n`, `--seed`), each written as soon as it is done, so that a run
    cut short, or one after a change of the threshold (`--resume`: only the auto pass again), can
    take them up."""

    def __init__(self, items: list[Item], seed: int, resume: bool) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.path = ARTIFACTS / f"router-n{len(items) // 7}-seed{seed}.json"
        self.ids = [item.id for item in items]
        self.digest = hashlib.sha256(json.dumps([item.messages for item in items]).encode()).hexdigest()
        self.passes: dict[str, list[dict[str, Any]]] = {}
        if resume and self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("digest") == self.digest:  # the same prompts
                self.passes = saved["passes"]

    def get(self, name: str) -> list[Reply] | None:
        if name not in self.passes:
            return None
        return [Reply(**{**r, "counts": TokenCounts(**r["counts"])}) for r in self.passes[name]]

    def put(self, name: str, replies: list[Reply]) -> None:
        self.passes[name] = [asdict(reply) for reply in replies]
        saved = {"digest": self.digest, "ids": self.ids, "passes": self.passes}
        self.path.write_text(json.dumps(saved, indent=1) + "\n")


def measure(base: str, args: argparse.Namespace, items: list[Item], saved: Saved) -> list[list[Reply]]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    passes = []
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        for mode in ("short", "long", None):
            name = mode or "auto"
            replies = None if name == "auto" else saved.get(name)
            if replies is None:
                replies = run_pass(client, items, args.model, mode, args.concurrency)
                saved.put(name, replies)
            else:
                progress(f"{name}: taken from {saved.path.relative_to(ROOT)}")
            passes.append(replies)
    return passes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="prompts per category (7 categories)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--url", help="a running gateway (default: start one with the embedded engine)")
    parser.add_argument("--api-key", default=os.environ.get("THINKGATE_API_KEY", ""))
    parser.add_argument("--model", default="thinkgate-arith")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/router.md alone")
    parser.add_argument(
        "--resume", action="store_true", help="reuse the saved short and long passes of this set"
    )
    args = parser.parse_args(argv)
    items = list(mixed_set(args.n, args.seed))
    progress(f"{len(items)} prompts ({args.n} per category, seed {args.seed}), 3 passes")
    saved = Saved(items, args.seed, args.resume)
    started = time.monotonic()
    if args.url:
        passes = measure(args.url.rstrip("/"), args, items, saved)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="thinkgate-router-") as tmp,
            embedded_gateway(Path(tmp), label="router") as base,
        ):
            passes = measure(base, args, items, saved)
    seconds = time.monotonic() - started
    short, long, live = passes
    profile = ProfileRegistry.from_dir(ROOT / "models" / "profiles").for_model(args.model)
    scorer = Scorer(items, short, long, profile)
    header = (
        f"`python -m bench.router --n {args.n} --seed {args.seed}`, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: model `{args.model}`, "
        f"{len(items)} prompts, in {seconds / 60:.1f} min; shipped "
        f"`[router] escalate_below = {profile.escalate_below}`."
    )
    section = render(scorer, live, profile.escalate_below, header)
    print(section)
    if not args.no_docs:
        write_docs(section)
        progress(f"written to {DOCS.relative_to(ROOT)} (between {BEGIN} and {END})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
