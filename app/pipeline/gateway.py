"""The gateway's long-lived parts, built once at start-up and shared by every request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.auth.keys import KeyStore
from app.core.config import Settings
from app.db.batch import SqliteWriter
from app.db.engine import create_engine, data_folder, migrate, sqlite_file
from app.engine.launcher import EmbeddedEngine
from app.engine.pool import UpstreamPool
from app.engine.transport import EngineTransport, HeadTimeout, mount_pattern, serves
from app.metering.ledger import Ledger
from app.metering.metrics import Metrics
from app.metering.prices import TokenCounts, apply_price_file, billed_prices, cost_micros
from app.metering.ratelimit import RateLimiter
from app.pipeline.media import ImageLimits
from app.pipeline.prepare import MediaPolicy
from app.profiles.profile import Mode, ProfileRegistry

log = logging.getLogger("thinkgate")


def _spool_path(settings: Settings) -> Path:
    if settings.ledger_spool is not None:
        return settings.ledger_spool
    folder = data_folder(settings.database_url)
    return folder / f"unsettled-{re.sub(r'[^A-Za-z0-9_.-]', '_', settings.instance_id)}.jsonl"


def _profiles(settings: Settings) -> ProfileRegistry:
    profiles = ProfileRegistry.from_dir(settings.models_dir / "profiles")
    if settings.prices_file is not None:
        profiles = apply_price_file(profiles, settings.prices_file)
    return profiles


def _embedded_engine(settings: Settings, profiles: ProfileRegistry) -> EmbeddedEngine | None:
    if not settings.embedded_engine:
        return None
    profile = profiles.by_name(settings.model)
    return EmbeddedEngine(
        profile,
        settings.models_dir / (profile.checkpoint or profile.name),
        port=settings.engine_port,
        log_path=settings.engine_log,
        kv_cache_gib=settings.engine_kv_cache_gib,
        startup_timeout_s=settings.engine_startup_timeout_s,
    )


def _engine_client(settings: Settings, upstreams: list[str]) -> tuple[httpx.AsyncClient, EngineTransport]:
    """One pooled client for the engines: keep-alive connections, no read timeout while a model
    thinks (the engine's own limits bound generation), a connect timeout to fail over fast.
    Plain-http engines go through the lean transport (app/engine/transport.py), returned too. The
    response head has a shorter deadline than the reads while it streams: an engine that takes a
    request and never answers is a 504 within upstream_header_timeout_s, not a 500 after the read
    timeout."""
    head_s = min(settings.upstream_header_timeout_s, settings.upstream_timeout_s)
    fast = EngineTransport(head_timeout=head_s)
    pooled = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_keepalive,
        ),
        trust_env=False,
    )
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s),
        transport=HeadTimeout(pooled, head_s),
        follow_redirects=False,
        trust_env=False,
        mounts={mount_pattern(url): fast for url in upstreams if serves(url)},
    )
    return client, fast


def _media_policy(settings: Settings) -> MediaPolicy:
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
        allowlist=tuple(settings.image_url_allowlist),
        fetch_timeout_s=settings.image_fetch_timeout_s,
    )
    return MediaPolicy(limits, max_images=settings.max_images_per_request)


@dataclass
class Gateway:
    settings: Settings
    profiles: ProfileRegistry
    pool: UpstreamPool
    client: httpx.AsyncClient
    keys: KeyStore
    ledger: Ledger
    limiter: RateLimiter
    metrics: Metrics
    media: MediaPolicy
    engine: EmbeddedEngine | None = None
    # The lean transport mounted for the http:// engines; the relay posts through it directly.
    engine_transport: EngineTransport | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        profiles = _profiles(settings)
        db = create_engine(settings.database_url)
        # On SQLite the per-request ledger writes are batched (see app/db/batch.py).
        database_file = sqlite_file(settings.database_url)
        writer = SqliteWriter(database_file) if database_file else None

        def price_of(model: str, mode: str, counts: TokenCounts) -> int:
            mode_key: Mode = "long" if mode == "long" else "short"
            return cost_micros(billed_prices(profiles.for_model(model), mode_key), counts)

        engine = _embedded_engine(settings, profiles)
        upstreams = [engine.url] if engine is not None else list(settings.upstreams)
        client, fast = _engine_client(settings, upstreams)
        return cls(
            settings=settings,
            profiles=profiles,
            pool=UpstreamPool(upstreams, client, probe_interval_s=settings.health_interval_s),
            client=client,
            keys=KeyStore(db, writer),
            ledger=Ledger(db, settings.instance_id, price_of, writer, spool=_spool_path(settings)),
            limiter=RateLimiter(db),
            metrics=Metrics(),
            media=_media_policy(settings),
            engine=engine,
            engine_transport=fast,
        )

    async def start(self) -> None:
        await migrate(self.settings.database_url)
        settled = await self.ledger.settle_spooled()
        if settled:
            log.warning("settled %d request(s) that a stopped gateway could not write", settled)
        await self.ledger.heartbeat()
        closed = await self.ledger.reconcile(stale_after_s=self.settings.stale_after_s, own=True)
        if closed:
            log.warning("reconciled %d request(s) left open by a stopped gateway as 'interrupted'", closed)
        if self.engine is not None:
            self.engine.start(self.client)
        await self.pool.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="thinkgate-housekeeping"))

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self.ledger.retry_unsettled()
                await self.ledger.heartbeat()
                await self.ledger.reconcile(stale_after_s=self.settings.stale_after_s)
                await self.limiter.prune()
            except Exception:  # the database may be briefly unreachable; try again next round
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.stop()
        if self.engine is not None:
            await self.engine.stop()
        await self.client.aclose()
        await self.ledger.close()
