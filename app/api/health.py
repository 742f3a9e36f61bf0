"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app import __version__
from app.api.deps import GatewayDep

router = APIRouter()


@router.get("/health", summary="The gateway process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready", summary="At least one engine replica answers", responses={503: {"description": "Not ready"}}
)
async def ready(gateway: GatewayDep) -> JSONResponse:
    replicas = [
        {
            "url": r.url,
            "healthy": r.healthy,
            "in_flight": r.in_flight,
            "models": sorted(r.models),
            "error": r.last_error,
        }
        for r in gateway.pool.replicas
    ]
    body: dict[str, Any] = {"status": "ready" if gateway.pool.ready else "starting", "replicas": replicas}
    if gateway.engine is not None:
        body["embedded_engine"] = {"log": str(gateway.engine.log_path), "restarts": gateway.engine.restarts}
    headers = {} if gateway.pool.ready else {"Retry-After": "5"}
    return JSONResponse(body, status_code=200 if gateway.pool.ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/ui/config.json", summary="What the bundled UI needs to know before sign-in")
async def ui_config(gateway: GatewayDep) -> dict[str, Any]:
    return {"auth_required": not gateway.settings.no_auth, "version": __version__}
