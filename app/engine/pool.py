"""Engine replicas: background health probes, model discovery, least-in-flight choice, affinity.

Each replica is an OpenAI-compatible server (vLLM, or anything speaking the same API). A probe asks
`GET /v1/models` (it answers only once the engine is ready, and tells which models it serves).
A replica that fails a probe or a connection is drained until a probe succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass

import httpx

from app.core.errors import EngineUnavailable, NotFound

log = logging.getLogger("thinkgate.engine")

# With affinity, stay on the preferred replica unless it is this much busier than the idlest one.
AFFINITY_SLACK = 4


@dataclass(slots=True, eq=False)
class Replica:
    url: str
    healthy: bool = False
    in_flight: int = 0
    models: frozenset[str] = frozenset()
    last_error: str | None = "not probed yet"

    def serves(self, model: str) -> bool:
        return model in self.models


class UpstreamPool:
    def __init__(self, urls: list[str], client: httpx.AsyncClient, *, probe_interval_s: float = 5.0) -> None:
        self.replicas = [Replica(url.rstrip("/")) for url in urls]
        self.client = client
        self.probe_interval_s = probe_interval_s
        self.max_model_len: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._turn = 0  # tie-break among the idlest replicas

    async def start(self) -> None:
        await self.probe_all()
        self._task = asyncio.create_task(self._probe_loop(), name="thinkgate-health-probes")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe_loop(self) -> None:
        while True:
            # Probe unhealthy replicas more often, so a starting engine is picked up quickly.
            interval = self.probe_interval_s if all(r.healthy for r in self.replicas) else 1.0
            await asyncio.sleep(interval)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(replica) for replica in self.replicas))

    async def probe(self, replica: Replica) -> None:
        try:
            response = await self.client.get(f"{replica.url}/v1/models", timeout=5.0)
            response.raise_for_status()
            data = response.json().get("data", [])
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            self._mark_down(replica, f"{type(exc).__name__}: {exc}")
            return
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("max_model_len"), int):
                self.max_model_len[str(entry["id"])] = entry["max_model_len"]
        models = frozenset(str(entry["id"]) for entry in data if isinstance(entry, dict) and "id" in entry)
        if not replica.healthy:
            log.info("replica %s is healthy, serving %s", replica.url, sorted(models))
        replica.models, replica.healthy, replica.last_error = models, True, None

    def _mark_down(self, replica: Replica, error: str) -> None:
        if replica.healthy:
            log.warning("replica %s is down: %s", replica.url, error)
        replica.healthy, replica.last_error = False, error

    def report_failure(self, replica: Replica, error: str) -> None:
        """A request could not connect: drain the replica until a probe sees it again."""
        self._mark_down(replica, error)

    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def known_models(self) -> set[str]:
        """Models seen on any replica, healthy or not (to tell 404 from 503)."""
        return {model for replica in self.replicas for model in replica.models}

    def check_model(self, model: str) -> None:
        """Refuse a model no replica has listed: 404, or 503 while no replica has listed any yet.

        Checked before anything is recorded or counted for a request, so that a metric label or a
        ledger row is only ever made of a served model id, never of a client's string."""
        if any(model in replica.models for replica in self.replicas):
            return
        if not self.known_models():
            raise EngineUnavailable("No engine has reported its models yet; retry shortly.")
        shown = model if len(model) <= 100 else f"{model[:100]}…"
        raise NotFound(f"The model {shown!r} does not exist.", param="model", code="model_not_found")

    def pick(self, model: str, *, affinity: str | None = None, exclude: Replica | None = None) -> Replica:
        candidates = [r for r in self.replicas if r.healthy and r.serves(model) and r is not exclude]
        if not candidates:
            if model in self.known_models() or not self.known_models():
                raise EngineUnavailable(f"No healthy engine is serving {model!r} right now; retry shortly.")
            raise NotFound(f"The model {model!r} does not exist", param="model", code="model_not_found")
        # Fewest in flight; ties rotate, so idle replicas share requests that never overlap too.
        fewest = min(r.in_flight for r in candidates)
        tied = [r for r in candidates if r.in_flight == fewest]
        self._turn += 1
        idlest = tied[self._turn % len(tied)]
        if affinity is None or len(candidates) == 1:
            return idlest
        # Rendezvous hashing: the same conversation prefers the same replica (prefix-cache reuse),
        # and only the conversations of a removed replica move when the set changes.
        preferred = max(candidates, key=lambda r: hashlib.blake2b(f"{affinity}|{r.url}".encode()).digest())
        return preferred if preferred.in_flight <= idlest.in_flight + AFFINITY_SLACK else idlest
