"""The `response` object of a run (OpenAI's `Response`), and its usage.

Output items, in order: `reasoning` (the model's reasoning text as `content: [reasoning_text]`; when
the request asks for `reasoning.summary`, the same text, whole, as the one `summary_text`: Thinkgate
never writes a summary the model did not write), then `message` (`output_text`) when there is an
answer, then one `function_call` per tool call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from app.core.errors import APIError, InvalidRequest
from app.metering.prices import TokenCounts, format_usd, to_usd
from app.pipeline.completion import Completion
from app.protocols.responses.types import ResponsesRequest

RESPONSE_PREFIX = "resp_"
REQUEST_PREFIX = "chatcmpl-"
ENCRYPTED = "reasoning.encrypted_content"

Sealer = Callable[[str], str]  # reasoning text -> sealed blob


def response_id(request_id: str) -> str:
    """The response's id for a ledger request id (`chatcmpl-X` -> `resp_X`): one id, two spellings."""
    return RESPONSE_PREFIX + request_id.removeprefix(REQUEST_PREFIX)


def item_ids(rid: str) -> tuple[str, str, str]:
    """The ids of a response's reasoning item, message item and function-call items (a prefix)."""
    tail = rid.removeprefix(RESPONSE_PREFIX)
    return f"rs_{tail}", f"msg_{tail}", f"fc_{tail}_"


def reasoning_item(
    item_id: str, text: str, request: ResponsesRequest, seal: Sealer | None, status: str = "completed"
) -> dict[str, Any]:
    summary_asked = request.reasoning is not None and bool(
        request.reasoning.summary or request.reasoning.generate_summary
    )
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if summary_asked and text else [],
        "content": [{"type": "reasoning_text", "text": text}] if text else [],
        "status": status,
    }
    if seal is not None and ENCRYPTED in (request.include or ()):
        item["encrypted_content"] = seal(text)
    return item


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.get("id") or item_id,
        "name": function.get("name", ""),
        "arguments": function.get("arguments", ""),
        "status": status,
    }


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def input_items(request: ResponsesRequest, rid: str) -> list[dict[str, Any]]:
    """The request's input as GET /v1/responses/{id}/input_items lists it: each item as it was sent
    (validated by the time it is stored), with its `type`, an `id` (its own, else one made from the
    response's) and a `status`; a message's string content as one text part."""
    tail = rid.removeprefix(RESPONSE_PREFIX)
    sent = (
        [{"type": "message", "role": "user", "content": request.input}]
        if isinstance(request.input, str)
        else request.input
    )
    listed = []
    for n, item in enumerate(sent):
        kind = item.get("type") or "message"
        entry = {**item, "type": kind}
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            entry["content"] = [{"type": part, "text": item["content"]}]
        entry.setdefault("id", f"{_ITEM_PREFIX.get(kind, 'item')}_{tail}_{n}")
        entry.setdefault("status", "completed")
        listed.append(entry)
    return listed


def item_page(items: list[dict[str, Any]], limit: int, order: str, after: str | None) -> dict[str, Any]:
    """One page of a response's input items, in `order` (`asc`: as sent; `desc`: latest first),
    after the item `after`."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"No input item {after!r} in this response.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }


def usage(completion: Completion, counts: TokenCounts | None = None) -> dict[str, Any]:
    counts = completion.counts if counts is None else counts
    decision = completion.decision
    return {
        "input_tokens": counts.prompt,
        "input_tokens_details": {"cached_tokens": counts.cached, "cache_write_tokens": 0},
        "output_tokens": counts.completion,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning},
        "total_tokens": counts.prompt + counts.completion,
        "cost": to_usd(completion.cost(counts)),
        "reasoning_mode": decision.mode,
        "reasoning_mode_reason": decision.reason,
    }


def envelope(
    completion: Completion, request: ResponsesRequest, status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """The `response` object around `output`, without usage (added once the run has ended)."""
    run = completion.run
    rid = response_id(completion.request_id)
    return {
        "id": rid,
        "object": "response",
        "created_at": run.created if run is not None else 0,
        "status": status,
        "model": request.model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [],
        "max_output_tokens": request.max_output_tokens,
        "previous_response_id": request.previous_response_id,
        "reasoning": {
            "effort": request.reasoning.effort if request.reasoning else None,
            "summary": request.reasoning.summary if request.reasoning else None,
        },
        "store": request.store is not False,
        "text": {"format": (request.text.format if request.text else None) or {"type": "text"}},
        "truncation": "disabled",
        "user": request.user,
        "usage": None,
        "reasoning_mode": completion.decision.mode,
        "reasoning_mode_reason": completion.decision.reason,
    }


def finished(body: dict[str, Any], completion: Completion) -> dict[str, Any]:
    """`body` with the run's outcome: status, incomplete details or error, usage."""
    failure: APIError | None = completion.failure
    if failure is not None:
        body["status"] = "failed"
        body["error"] = {"code": failure.code or failure.type, "message": failure.message}
    elif completion.status == "length":
        body["status"] = "incomplete"
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        body["status"] = "completed"
    body["usage"] = usage(completion)
    return body


def output_items(
    completion: Completion, request: ResponsesRequest, seal: Sealer | None
) -> list[dict[str, Any]]:
    run = completion.run
    assert run is not None
    state = run.choices.get(0)
    if state is None:
        return []
    rs_id, msg_id, fc_prefix = item_ids(response_id(completion.request_id))
    items: list[dict[str, Any]] = []
    reasoning = "".join(state.reasoning)
    if reasoning:
        items.append(reasoning_item(rs_id, reasoning, request, seal))
    content = "".join(state.content)
    if content or not state.tool_calls:
        items.append(message_item(msg_id, content))
    for i in sorted(state.tool_calls):
        items.append(call_item(f"{fc_prefix}{i}", state.tool_calls[i]))
    return items


def response_body(completion: Completion, request: ResponsesRequest, seal: Sealer | None) -> dict[str, Any]:
    body = envelope(completion, request, "in_progress", output_items(completion, request, seal))
    return finished(body, completion)


def headers(completion: Completion) -> dict[str, str]:
    decision = completion.decision
    assert completion.prepared is not None
    return {
        **completion.notices,  # what the pipeline changed (tools dropped, output bound fitted)
        "x-request-id": completion.request_id,
        "x-reasoning-mode": decision.mode,
        "x-reasoning-mode-reason": decision.reason,
    }


class Final:
    """The run's finished `response` object, built once (the Idempotency-Key replay, the reply and the
    stored copy are the same object, sealed reasoning included), and kept by `keep` (storage)."""

    def __init__(
        self,
        completion: Completion,
        request: ResponsesRequest,
        seal: Sealer | None,
        keep: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.completion = completion
        self.request = request
        self.seal = seal
        self.keep = keep
        self._body: dict[str, Any] | None = None
        completion.stored_response = lambda: orjson.dumps(self.body()).decode()

    def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = response_body(self.completion, self.request, self.seal)
        return self._body

    async def kept(self) -> dict[str, Any]:
        body = self.body()
        await self.keep(body)
        return body


async def complete(final: Final) -> tuple[int, bytes, dict[str, str]]:
    """Run to the end and settle; the status, JSON body and headers of the reply."""
    completion = final.completion
    out = headers(completion)
    async for _ in completion.chunks():
        pass
    await completion.finish(disconnected=False)
    failure = completion.failure
    if failure is not None:
        return failure.status, orjson.dumps(failure.body()), {**out, **failure.headers}
    body = await final.kept()
    out["x-usage-cost"] = format_usd(completion.cost())
    return 200, orjson.dumps(body), out
