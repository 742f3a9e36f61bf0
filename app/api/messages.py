"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic Messages API front door.

Requests are served by `handle` and `count_tokens`, registered first and out of the schema: the key
is checked before the body is read (401 before 400), and a bad body is a 400 in Anthropic's shape
(the app's error handlers pick the shape by route: `PREFIX`). The typed routes after them are
never reached; they document the API in the OpenAPI schema. The door itself is
`protocols/messages/`; the way of a request, `pipeline/completion.py`, as for every door.
`anthropic-version` and `anthropic-beta` headers are accepted and not needed.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from app.api.chat import ERROR_RESPONSES
from app.api.deps import MAX_IDEMPOTENCY_KEY, CurrentPrincipal, GatewayDep, get_principal, idempotency_key_of
from app.api.guards import MESSAGES_PREFIX
from app.api.streaming import DeferredJSONResponse, SSEResponse
from app.pipeline.completion import Completion
from app.pipeline.gateway import Gateway
from app.pipeline.token_count import count_prompt_tokens
from app.protocols.messages.adapter import request_fingerprint, turn_from_messages
from app.protocols.messages.responder import MessagesResponder, replayed_events
from app.protocols.messages.signing import ThinkingSigner, signer_for
from app.protocols.messages.types import CountTokensRequest, MessagesRequest

PREFIX = MESSAGES_PREFIX
_Body = TypeVar("_Body", bound=BaseModel)
PATH = PREFIX
COUNT_PATH = PREFIX + "/count_tokens"


def _signer(request: Request, gateway: Gateway) -> ThinkingSigner:
    signer: ThinkingSigner | None = getattr(request.app.state, "thinking_signer", None)
    if signer is None:
        signer = request.app.state.thinking_signer = signer_for(gateway.settings)
    return signer


async def _body(request: Request, model: type[_Body]) -> _Body:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def handle(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await get_principal(request, gateway)  # who is asking comes first: 401 before 400
    body = await _body(request, MessagesRequest)
    idempotency_key = idempotency_key_of(request)
    signer = _signer(request, gateway)
    completion = Completion(
        gateway,
        principal,
        turn_from_messages(body, signer),
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(body) if idempotency_key else None,
        keep_text=not body.stream,  # a stream's blocks are signed as they go (responder.BlockWriter)
        api="messages",
    )
    stored = await completion.start()
    if stored is not None:
        return _replay(stored, body.stream)
    responder = MessagesResponder(completion, body, signer)
    if body.stream:
        return SSEResponse(responder.frames(), completion.finish, responder.headers())
    return DeferredJSONResponse(responder.complete, completion.finish)


def _replay(stored: dict[str, Any], stream: bool) -> Response:
    """The completed response of an earlier request with the same Idempotency-Key, not billed again."""
    request_id = str(stored.get("id", "")).removeprefix("msg_")
    headers = {"idempotent-replayed": "true", "x-request-id": request_id, "request-id": request_id}
    if stream:
        return StreamingResponse(replayed_events(stored), media_type="text/event-stream", headers=headers)
    return Response(orjson.dumps(stored), media_type="application/json", headers=headers)


async def count_tokens(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    principal = await get_principal(request, gateway)
    body = await _body(request, CountTokensRequest)
    turn = turn_from_messages(body, _signer(request, gateway))
    return JSONResponse({"input_tokens": await count_prompt_tokens(gateway, turn, principal)})


router = APIRouter()
router.add_api_route(PATH, handle, methods=["POST"], include_in_schema=False)
router.add_api_route(COUNT_PATH, count_tokens, methods=["POST"], include_in_schema=False)


class TokenCount(BaseModel):
    input_tokens: int


@router.post(
    PATH,
    response_model=None,
    responses={200: {"description": "A message object, or an SSE stream of its events"}, **ERROR_RESPONSES},
    summary="Create a message (Anthropic Messages API)",
)
async def create_message(
    body: MessagesRequest,
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    idempotency_key: Annotated[str | None, Header(max_length=MAX_IDEMPOTENCY_KEY)] = None,
) -> Any:
    """The schema of the route; requests are served by `handle` (see the module doc)."""
    raise AssertionError("served by handle, registered before this route")


@router.post(COUNT_PATH, responses=ERROR_RESPONSES, summary="Count a message request's input tokens")
async def count_message_tokens(body: CountTokensRequest, principal: CurrentPrincipal) -> TokenCount:
    """The schema of the route; requests are served by `count_tokens` (see the module doc)."""
    raise AssertionError("served by count_tokens, registered before this route")
