"""`POST /v1/chat/completions`: the Chat Completions front door's HTTP route.

Requests reach `handle` straight from `api/app.py: ThinkgateApp` (the chat lane), without
FastAPI's routing, middleware and dependency solving, a measurable share of a short request's CPU;
the route below is registered for the OpenAPI schema only. Everything else is the door's
(`protocols/chat/adapter.py`) and the pipeline's (`pipeline/completion.py`).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from app.api.deps import MAX_IDEMPOTENCY_KEY, CurrentPrincipal, GatewayDep, get_principal, idempotency_key_of
from app.api.error_docs import error_responses
from app.api.streaming import DeferredJSONResponse, SSEResponse
from app.pipeline.completion import Completion
from app.pipeline.gateway import Gateway
from app.protocols.chat.adapter import ChatResponder, replayed_frames, request_fingerprint, turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest

PATH = "/v1/chat/completions"


async def handle(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await get_principal(request, gateway)  # who is asking comes first: 401 before 400
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    idempotency_key = idempotency_key_of(request)
    options = body.stream_options
    completion = Completion(
        gateway,
        principal,
        turn_from_chat(body),
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(body) if idempotency_key else None,
        keep_text=not body.stream,
        counts_per_chunk=bool(body.stream and options and options.continuous_usage_stats),
        api="chat",
    )
    stored = await completion.start()
    if stored is not None:
        return _replay(stored, body.stream)
    responder = ChatResponder(completion, body)
    if body.stream:
        return SSEResponse(responder.frames(), completion.finish, responder.headers())
    return DeferredJSONResponse(responder.complete, completion.finish)


def _replay(stored: dict[str, Any], stream: bool) -> Response:
    """The completed response of an earlier request with the same Idempotency-Key, not billed again."""
    headers = {"idempotent-replayed": "true", "x-request-id": str(stored.get("id", ""))}
    if stream:
        return StreamingResponse(replayed_frames(stored), media_type="text/event-stream", headers=headers)
    return Response(orjson.dumps(stored), media_type="application/json", headers=headers)


router = APIRouter()

ERROR_RESPONSES = error_responses(
    {
        400: "Invalid request (the field is named in error.param)",
        401: "Missing or wrong API key",
        403: "The key may not use this mode or effort",
        404: "Unknown model",
        409: "This Idempotency-Key is still running, or was used with another request",
        413: "Body or image too large",
        429: "Budget exhausted (insufficient_quota) or rate limit (rate_limit_exceeded)",
        502: "The engine failed",
        503: "No engine available (see Retry-After)",
        504: "The engine did not answer in time (see Retry-After)",
    }
)


@router.post(
    PATH,
    response_model=None,
    responses={
        200: {"description": "A chat.completion object, or an SSE stream of chat.completion.chunk"},
        **ERROR_RESPONSES,
    },
    summary="Create a chat completion (long-CoT or short-CoT)",
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> Any:
    """The schema of the route; requests are served by `handle` (see the module doc)."""
    raise AssertionError("served by handle, through ThinkgateApp's chat lane")
