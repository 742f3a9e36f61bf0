"""Prometheus metrics of one gateway process (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
