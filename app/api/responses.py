"""`POST /v1/responses` (and, with a stored response, `GET`/`DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items`): the
OpenAI Responses API front door's HTTP routes. The translation is the door's
(`protocols/responses/`), the rest the pipeline's (`pipeline/completion.py`), as for Chat Completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from app.api.chat import ERROR_RESPONSES
from app.api.deps import CurrentPrincipal, get_principal, idempotency_key_of
from app.api.streaming import DeferredJSONResponse, SSEResponse
from app.auth.principal import Principal
from app.core.errors import InvalidRequest
from app.pipeline.completion import Completion
from app.pipeline.gateway import Gateway
from app.protocols.responses import output
from app.protocols.responses.adapter import request_fingerprint, turn_from_responses
from app.protocols.responses.events import EventStream, replayed_events
from app.protocols.responses.sealing import ReasoningSealer, sealer_for
from app.protocols.responses.store import ResponseStore, conversation
from app.protocols.responses.types import ResponsesRequest

PATH = "/v1/responses"


async def handle(request: Request) -> Response:
    """`POST /v1/responses`, served straight from `api/app.py: ThinkgateApp`'s lanes (as chat
    completions are): the caller first (401 before 400), then the body."""
    gateway: Gateway = request.app.state.gateway
    principal = await get_principal(request, gateway)
    try:
        body = ResponsesRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await respond(request, body, principal)


async def respond(request: Request, body: ResponsesRequest, principal: Principal) -> Response:
    """One `POST /v1/responses`, its body parsed and its caller known."""
    gateway: Gateway = request.app.state.gateway
    if body.background:
        raise InvalidRequest("Background responses are not supported.", param="background")
    idempotency_key = idempotency_key_of(request)
    sealer = _sealer(request, gateway)
    store = _store(request, gateway)
    owner = principal.key_id
    history = await store.history(body.previous_response_id, owner) if body.previous_response_id else None
    turn = turn_from_responses(body, history, lambda blob, param: sealer.open(blob, owner, param))
    completion = Completion(
        gateway,
        principal,
        turn,
        api="responses",
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(body) if idempotency_key else None,
        keep_text=True,
    )
    stored = await completion.start()
    if stored is not None:
        return _replay(stored, body.stream)

    async def keep(response: dict[str, Any]) -> None:
        if body.store is not False:
            history = conversation(turn.messages, response)
            await store.put(response, owner, history, output.input_items(body, response["id"]))

    final = output.Final(completion, body, lambda text: sealer.seal(text, owner), keep)
    if body.stream:
        return SSEResponse(EventStream(final).frames(), completion.finish, output.headers(completion))
    return DeferredJSONResponse(lambda: output.complete(final), completion.finish)


def _sealer(request: Request, gateway: Gateway) -> ReasoningSealer:
    sealer: ReasoningSealer | None = getattr(request.app.state, "responses_sealer", None)
    if sealer is None:
        sealer = request.app.state.responses_sealer = sealer_for(gateway.settings)
    return sealer


def _store(request: Request, gateway: Gateway) -> ResponseStore:
    store: ResponseStore | None = getattr(request.app.state, "responses_store", None)
    if store is None:
        retention_s = gateway.settings.responses_retention_days * 86400
        ledger = gateway.ledger
        store = request.app.state.responses_store = ResponseStore(ledger.engine, retention_s, ledger.writer)
    return store


def _replay(stored: dict[str, Any], stream: bool) -> Response:
    headers = {"idempotent-replayed": "true"}
    if stream:
        return StreamingResponse(replayed_events(stored), media_type="text/event-stream", headers=headers)
    return Response(orjson.dumps(stored), media_type="application/json", headers=headers)


router = APIRouter()


@router.post(
    PATH,
    response_model=None,
    responses={200: {"description": "A response object, or an SSE stream of its events"}, **ERROR_RESPONSES},
    summary="Create a model response (OpenAI Responses API)",
)
async def create_response(body: ResponsesRequest, request: Request, principal: CurrentPrincipal) -> Response:
    """The schema of the route; requests are served by `handle` (through ThinkgateApp's lanes)."""
    return await respond(request, body, principal)


@router.get(
    PATH + "/{response_id}",
    response_model=None,
    responses={200: {"description": "A stored response object"}, **ERROR_RESPONSES},
    summary="Get a stored response (store: true) of this API key",
)
async def get_response(response_id: str, request: Request, principal: CurrentPrincipal) -> Response:
    stored = await _store(request, request.app.state.gateway).response(response_id, principal.key_id)
    return Response(orjson.dumps(stored), media_type="application/json")


@router.get(
    PATH + "/{response_id}/input_items",
    response_model=None,
    responses={200: {"description": "A page of the response's input items"}, **ERROR_RESPONSES},
    summary="List a stored response's input items (its request's input)",
)
async def list_input_items(
    response_id: str,
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Response:
    items = await _store(request, request.app.state.gateway).input_items(response_id, principal.key_id)
    page = output.item_page(items, limit, order, after)
    return Response(orjson.dumps(page), media_type="application/json")


@router.delete(
    PATH + "/{response_id}",
    response_model=None,
    responses={200: {"description": "The response was deleted"}, **ERROR_RESPONSES},
    summary="Delete a stored response of this API key",
)
async def delete_response(response_id: str, request: Request, principal: CurrentPrincipal) -> Response:
    await _store(request, request.app.state.gateway).delete(response_id, principal.key_id)
    deleted = {"id": response_id, "object": "response.deleted", "deleted": True}
    return Response(orjson.dumps(deleted), media_type="application/json")
