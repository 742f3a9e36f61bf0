"""Prometheus metrics of one gateway process (served at /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.metering.prices import TokenCounts


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thinkgate_requests",
            "Chat requests by final status",
            ["model", "mode", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "thinkgate_tokens",
            "Tokens by kind (prompt, reasoning, answer)",
            ["model", "mode", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "thinkgate_cost_micro_usd",
            "Cost settled, in micro-USD",
            ["model", "mode"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "thinkgate_time_to_first_token_seconds",
            "Time from request to first generated text",
            ["model", "mode"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "thinkgate_requests_in_flight", "Requests being served", registry=self.registry
        )
        self.mode_decisions = Counter(
            "thinkgate_mode_decisions", "Mode decisions by source", ["mode", "source"], registry=self.registry
        )
        # The children of one (model, mode): looked up once, not five times a request.
        self._settled: dict[tuple[str, str], tuple[Any, ...]] = {}

    def settled(
        self, model: str, mode: str, status: str, counts: TokenCounts, cost_micros: int, ttft_ms: float | None
    ) -> None:
        """A settled request's status, tokens, cost and time to first token."""
        children = self._settled.get((model, mode))
        if children is None:
            children = self._settled[(model, mode)] = (
                self.tokens.labels(model, mode, "prompt"),
                self.tokens.labels(model, mode, "reasoning"),
                self.tokens.labels(model, mode, "answer"),
                self.cost.labels(model, mode),
                self.ttft.labels(model, mode),
            )
        prompt, reasoning, answer, cost, ttft = children
        self.requests.labels(model, mode, status).inc()
        prompt.inc(counts.prompt)
        reasoning.inc(counts.reasoning)
        answer.inc(counts.answer)
        cost.inc(cost_micros)
        if ttft_ms is not None:
            ttft.observe(ttft_ms / 1000)
