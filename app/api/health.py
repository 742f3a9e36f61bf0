"""Liveness, readiness and Prometheus metrics.

`/ready` is a probe anyone may call: it answers the status (and `Retry-After` while not ready) and
nothing else. The replicas (engine URLs, their last errors) and the embedded engine's log path are
for the admin key only, or for the local operator of a `--no-auth` gateway (loopback only, with its
Host and Origin checked: api/app.py), which is how the tests find the embedded engine's URL.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from app import __version__
from app.api.deps import GatewayDep, is_admin_caller

router = APIRouter()


@router.get("/health", summary="The gateway process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready", summary="At least one engine replica answers", responses={503: {"description": "Not ready"}}
)
async def ready(request: Request, gateway: GatewayDep) -> JSONResponse:
    status = "ready" if gateway.pool.ready else "starting"
    code = 200 if gateway.pool.ready else 503
    headers = {} if gateway.pool.ready else {"Retry-After": "5"}
    if not (gateway.settings.no_auth or await is_admin_caller(request, gateway)):
        return JSONResponse({"status": status}, status_code=code, headers=headers)
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
    body: dict[str, Any] = {"status": status, "replicas": replicas}
    if gateway.engine is not None:
        body["embedded_engine"] = {"log": str(gateway.engine.log_path), "restarts": gateway.engine.restarts}
    return JSONResponse(body, status_code=code, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/ui/config.json", summary="What the bundled UI needs to know before sign-in")
async def ui_config(gateway: GatewayDep) -> dict[str, Any]:
    return {"auth_required": not gateway.settings.no_auth, "version": __version__}
