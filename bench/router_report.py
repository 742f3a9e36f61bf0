"""Scoring `bench.router`'s passes: every strategy on every prompt, the frontier, the tables.

The strategies are scored from the short and long passes (each prompt asked in both modes through
the gateway, the short answers with their token log-probabilities): always-long and always-short take
their mode's answer; the rules take the answer of the mode `app.pipeline.autoroute.route` picks;
an escalation strategy takes the short answer when its confidence is at or above a threshold, else
the long answer, and pays for both attempts; "rules + escalation" escalates only what the rules send
to long mode (the rest is answered short). Costs are what the gateway bills: a turn answered short
first is billed in the mode that answered it, an escalated one at long-mode prices for both attempts
(pipeline/escalate.py). The live auto
pass is the shipped strategy itself, through the gateway; its agreement with its simulation is
reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.metering.prices import TokenCounts, billed_prices, cost_micros
from app.pipeline.autoroute import route
from app.profiles.profile import ModelProfile
from bench.router_set import CATEGORIES, Item, is_right

THRESHOLDS = (-0.02, -0.05, -0.1, -0.2, -0.3, -0.5, -0.75, -1.0, -1.5, -2.0, -3.0, -5.0)
METRICS: dict[str, Callable[[Sequence[float]], float]] = {"min": min, "mean": statistics.fmean}


@dataclass
class Reply:
    """One answer through the gateway: its text, the mode and reason it reports, its usage."""

    answer: str = ""
    mode: str = ""
    reason: str = ""
    counts: TokenCounts = field(default_factory=TokenCounts)
    cost_micros: int = 0
    logprobs: list[float] = field(default_factory=list)  # the answer's tokens (when asked for)
    error: str = ""


@dataclass(frozen=True)
class Scored:
    """One strategy's outcome on one prompt."""

    right: bool
    tokens: int
    cost: int
    mode: str
    escalated: bool = False


@dataclass(frozen=True)
class Row:
    name: str
    scores: list[Scored]

    @property
    def accuracy(self) -> float:
        return sum(s.right for s in self.scores) / len(self.scores)

    @property
    def tokens(self) -> float:
        return statistics.fmean(s.tokens for s in self.scores)

    @property
    def cost(self) -> float:
        return statistics.fmean(s.cost for s in self.scores)

    @property
    def escalated(self) -> float:
        return sum(s.escalated for s in self.scores) / len(self.scores)


def plus(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(*(x + y for x, y in zip(_fields(a), _fields(b), strict=True)))


def _fields(c: TokenCounts) -> tuple[int, int, int, int, int]:
    return c.prompt, c.image, c.cached, c.reasoning, c.answer


class Scorer:
    """Scores strategies over the items, from their short and long replies."""

    def __init__(
        self, items: list[Item], short: list[Reply], long: list[Reply], profile: ModelProfile
    ) -> None:
        self.items, self.short, self.long, self.profile = items, short, long, profile
        self.long_prices = billed_prices(profile, "long")

    def reply(self, index: int, mode: str) -> Scored:
        item, reply = self.items[index], (self.short if mode == "short" else self.long)[index]
        right = not reply.error and is_right(item, reply.answer, mode)
        return Scored(right, reply.counts.completion, reply.cost_micros, mode)

    def rules_mode(self, index: int, *, ui_tasks: bool = True) -> str:
        text, has_image = self.items[index].last_user_text
        decision = route(text, has_image=has_image, image_alone=self.profile.image_alone)
        if not ui_tasks and decision.reason == "ui background task":
            return "long"  # before this rule, their quoted chat (with arithmetic) sent them long
        return decision.mode

    def probed(self, index: int, metric: str, threshold: float) -> Scored:
        """Short first; long below `threshold`; one record, billed in the mode that answered."""
        short, long = self.short[index], self.long[index]
        score = METRICS[metric](short.logprobs) if short.logprobs else None
        if score is not None and score >= threshold:
            kept = self.reply(index, "short")
            return Scored(kept.right, kept.tokens, short.cost_micros, "short")
        both = plus(short.counts, long.counts)
        right = self.reply(index, "long").right
        return Scored(right, both.completion, cost_micros(self.long_prices, both), "long", escalated=True)

    def strategy(self, name: str, metric: str = "min", threshold: float = -1.0) -> Row:
        scores = []
        for i in range(len(self.items)):
            if name == "always long":
                scores.append(self.reply(i, "long"))
            elif name == "always short":
                scores.append(self.reply(i, "short"))
            elif name in ("rules", "rules, UI tasks long"):
                scores.append(self.reply(i, self.rules_mode(i, ui_tasks=name == "rules")))
            elif name == "escalation" or self.rules_mode(i) == "long":
                scores.append(self.probed(i, metric, threshold))
            else:  # rules + escalation, the rules said short
                scores.append(self.reply(i, "short"))
        if name in ("escalation", "rules + escalation"):
            return Row(f"{name} ({metric} >= {threshold:g})", scores)
        return Row(name, scores)

    def oracle(self) -> Row:
        """The cheapest right answer of the two modes, knowing the answers: a bound, not a strategy."""
        scores = []
        for i in range(len(self.items)):
            short, long = self.reply(i, "short"), self.reply(i, "long")
            scores.append(short if short.right or not long.right else long)
        return Row("oracle (bound)", scores)

    def best(self, name: str, metric: str, target: float) -> Row:
        """The threshold with the fewest tokens at `target` accuracy or better (else the most accurate)."""
        rows = [self.strategy(name, metric, t) for t in THRESHOLDS]
        meeting = [row for row in rows if row.accuracy >= target - 1e-9]
        if meeting:
            return min(meeting, key=lambda row: (row.tokens, -row.accuracy))
        return max(rows, key=lambda row: (row.accuracy, -row.tokens))

    def auroc(self, metric: str) -> float | None:
        """How well a short answer's confidence separates right from wrong answers to problems: the
        chance that a right one scores above a wrong one (ties count half)."""
        right: list[float] = []
        wrong: list[float] = []
        for i, item in enumerate(self.items):
            logprobs = self.short[i].logprobs
            if item.grade == "problem" and logprobs:
                (right if self.reply(i, "short").right else wrong).append(METRICS[metric](logprobs))
        if not right or not wrong:
            return None
        wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
        return wins / (len(right) * len(wrong))


def live_row(items: list[Item], replies: list[Reply]) -> Row:
    scores = []
    for item, reply in zip(items, replies, strict=True):
        right = not reply.error and is_right(item, reply.answer, reply.mode)
        escalated = "escalated" in reply.reason
        scores.append(Scored(right, reply.counts.completion, reply.cost_micros, reply.mode, escalated))
    return Row("auto, as shipped (live)", scores)


def table(rows: list[Row], baseline: Row) -> str:
    lines = [
        "| strategy | accuracy | mean output tokens | of always-long's | mean cost (µUSD) | escalated |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        share = row.tokens / baseline.tokens if baseline.tokens else 0.0
        lines.append(
            f"| {row.name} | {row.accuracy:.1%} | {row.tokens:.1f} | {share:.0%} | {row.cost:.1f} | "
            f"{row.escalated:.0%} |"
        )
    return "\n".join(lines)


def by_category(items: list[Item], rows: list[Row]) -> str:
    head = "| category | " + " | ".join(row.name for row in rows) + " |"
    lines = [head, "|---|" + "---:|" * len(rows), "| | " + " | ".join("right, tokens" for _ in rows) + " |"]
    for category in CATEGORIES:
        picked = [i for i, item in enumerate(items) if item.category == category]
        if not picked:
            continue
        cells = []
        for row in rows:
            scores = [row.scores[i] for i in picked]
            right = sum(s.right for s in scores) / len(scores)
            cells.append(f"{right:.0%}, {statistics.fmean(s.tokens for s in scores):.0f}")
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier(scorer: Scorer) -> str:
    lines = [
        "| threshold | "
        + " | ".join(f"{n} ({m})" for n in ("rules + escalation", "escalation") for m in METRICS)
        + " |",
        "|---:|" + "---:|" * 4,
    ]
    for t in THRESHOLDS:
        cells = []
        for name in ("rules + escalation", "escalation"):
            for metric in METRICS:
                row = scorer.strategy(name, metric, t)
                cells.append(f"{row.accuracy:.1%}, {row.tokens:.0f}")
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
