"""`GET /v1/models`: served models, each with its `:long` / `:short` mode aliases."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import CurrentPrincipal, GatewayDep

router = APIRouter()


@router.get("/v1/models", summary="List served models and their mode aliases")
async def list_models(_: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for model in sorted(gateway.pool.known_models()):
        profile = gateway.profiles.for_model(model)
        caps = {
            "vision": profile.vision,
            "reasoning": profile.reasoning,
            "modes": ["auto", "long", "short"] if profile.reasoning else ["short"],
            "max_thinking_budget": profile.budgets["high"] if profile.reasoning else 0,
            "context_length": gateway.pool.max_model_len.get(model, profile.context_length),
            "profile": profile.name,
        }
        entry = {"object": "model", "created": 0, "owned_by": "thinkgate"}
        data.append({"id": model, **entry, "thinkgate": caps})
        if profile.reasoning:
            for mode in ("long", "short"):
                data.append(
                    {"id": f"{model}:{mode}", **entry, "thinkgate": {**caps, "alias_of": model, "mode": mode}}
                )
    return {"object": "list", "data": data}
