"""Counting a turn's prompt tokens with the model's own tokenizer (images included), generating nothing.

The count is of exactly the prompt the turn would send as a completion: the same preparation
(normalised messages, template switches, images), then the engine's `/tokenize`. It reaches the
engine, so it counts against the key's request rate like a completion, before any image is decoded;
it is free, so it takes no budget and no tokens of the minute's allowance.
"""

from __future__ import annotations

from typing import Any

import httpx

from app.auth.principal import Principal
from app.core.errors import UpstreamError
from app.engine.errors import CONNECT_ERRORS, engine_error, unanswered
from app.pipeline.gateway import Gateway
from app.pipeline.modes import split_model_suffix
from app.pipeline.prepare import PreparedChat, load_images, prepare_chat
from app.pipeline.turn import Turn

# The body fields besides the messages that change the prompt the chat template renders.
TOKENIZE_FIELDS = ("chat_template_kwargs", "add_generation_prompt", "continue_final_message", "tools")
# The whole /tokenize exchange; its head has the deadline of every engine request (the transport's).
TOKENIZE_TIMEOUT_S = 60.0


async def count_prompt_tokens(gateway: Gateway, turn: Turn, principal: Principal) -> int:
    gateway.pool.check_model(split_model_suffix(turn.model)[0])
    prepared = prepare_chat(turn, principal, gateway.profiles, gateway.media)
    if gateway.settings.metering:
        await gateway.limiter.admit(principal, 0)
    await load_images(prepared, gateway.media, gateway.client)
    return await prepared_prompt_tokens(gateway, prepared)


async def prepared_prompt_tokens(gateway: Gateway, prepared: PreparedChat) -> int:
    """The exact prompt tokens of a prepared turn (its images loaded), by the engine's /tokenize."""
    tokenize: dict[str, Any] = {"model": prepared.model, "messages": prepared.body["messages"]}
    tokenize.update({name: prepared.body[name] for name in TOKENIZE_FIELDS if name in prepared.body})
    response = await _tokenize(gateway, prepared.model, tokenize)
    if response.status_code >= 400:
        raise engine_error(response.status_code, response.content, prepared.request_id, "to count the tokens")
    return _token_count(response)


async def _tokenize(gateway: Gateway, model: str, body: dict[str, Any]) -> httpx.Response:
    replica = gateway.pool.pick(model)
    try:
        return await gateway.client.post(f"{replica.url}/tokenize", json=body, timeout=TOKENIZE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        if isinstance(exc, (*CONNECT_ERRORS, httpx.TimeoutException)):
            gateway.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
        raise unanswered(exc) from exc


def _token_count(response: httpx.Response) -> int:
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    count = payload.get("count") if isinstance(payload, dict) else None
    if not isinstance(count, int):
        raise UpstreamError("The engine's /tokenize answer has no token count.")
    return count
