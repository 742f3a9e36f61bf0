"""Accuracy and per-call latency of the auto mode router on the labelled prompt set.

    python -m bench.router_accuracy [--repeat N] [--path bench/router_prompts.jsonl]

Prints accuracy, the confusion matrix, every miss grouped by category, and the mean and p99
microseconds per `route` call (time.perf_counter_ns around each call, over the whole set, repeated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from app.pipeline.autoroute import route

DEFAULT_PATH = Path(__file__).with_name("router_prompts.jsonl")
MODES = ("long", "short")


@dataclass(frozen=True)
class LabelledPrompt:
    prompt: str
    has_image: bool
    label: str
    category: str
    split: str


@dataclass(frozen=True)
class Miss:
    case: LabelledPrompt
    predicted: str
    reason: str


def load(path: Path = DEFAULT_PATH) -> list[LabelledPrompt]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            cases.append(
                LabelledPrompt(
                    row["prompt"],
                    bool(row.get("has_image", False)),
                    row["label"],
                    row.get("category", "?"),
                    row.get("split", "dev"),
                )
            )
    return cases


def evaluate(cases: list[LabelledPrompt]) -> tuple[float, Counter[tuple[str, str]], list[Miss]]:
    """Accuracy, (label, predicted) counts and the misses."""
    confusion: Counter[tuple[str, str]] = Counter()
    misses = []
    for case in cases:
        # Labelled for the bundled model, whose profile takes an image alone as a problem (long).
        decision = route(case.prompt, has_image=case.has_image, image_alone="long")
        confusion[(case.label, decision.mode)] += 1
        if decision.mode != case.label:
            misses.append(Miss(case, decision.mode, decision.reason))
    return (len(cases) - len(misses)) / len(cases), confusion, misses


def time_calls(cases: list[LabelledPrompt], repeat: int) -> list[int]:
    """Nanoseconds per call, every case `repeat` times (after one warm-up pass)."""
    for case in cases:
        route(case.prompt, has_image=case.has_image)
    samples = []
    for _ in range(repeat):
        for case in cases:
            started = time.perf_counter_ns()
            route(case.prompt, has_image=case.has_image)
            samples.append(time.perf_counter_ns() - started)
    return samples


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    cases = load(args.path)
    accuracy, confusion, misses = evaluate(cases)
    labels = Counter(case.label for case in cases)
    print(f"prompts: {len(cases)} ({', '.join(f'{labels[m]} {m}' for m in MODES)})")
    print(f"accuracy: {accuracy:.3f} ({len(cases) - len(misses)}/{len(cases)})")
    for split in sorted({case.split for case in cases}):
        part = [case for case in cases if case.split == split]
        part_accuracy, _, part_misses = evaluate(part)
        print(f"  {split:<10} {part_accuracy:.3f} ({len(part) - len(part_misses)}/{len(part)})")
    print("\nconfusion (rows: label, columns: routed)")
    print(f"{'':>8}" + "".join(f"{m:>8}" for m in MODES))
    for label in MODES:
        print(f"{label:>8}" + "".join(f"{confusion[(label, m)]:>8}" for m in MODES))

    by_category: dict[str, list[Miss]] = defaultdict(list)
    for miss in misses:
        by_category[miss.case.category].append(miss)
    totals = Counter(case.category for case in cases)
    print("\nmisses by category")
    for category in sorted(totals):
        missed = by_category.get(category, [])
        print(f"  {category:<18} {len(missed)}/{totals[category]}")
        for miss in missed:
            image = "[image] " if miss.case.has_image else ""
            prompt = miss.case.prompt.replace("\n", " ")[:90]
            print(f"      -> {miss.predicted:<5} ({miss.reason}): {image}{prompt}")

    samples = time_calls(cases, args.repeat)
    print(
        f"\nlatency over {len(samples)} calls: mean {statistics.fmean(samples) / 1000:.1f} µs, "
        f"p50 {percentile(samples, 0.50) / 1000:.1f} µs, p99 {percentile(samples, 0.99) / 1000:.1f} µs, "
        f"max {max(samples) / 1000:.1f} µs"
    )
    long_text = "Please look at the following data. " * 30_000  # ~1 MB
    started = time.perf_counter_ns()
    decision = route(long_text)
    elapsed_us = (time.perf_counter_ns() - started) / 1000
    print(f"1 MB prompt: {elapsed_us:.1f} µs -> {decision.mode} ({decision.reason})")


if __name__ == "__main__":
    main()
