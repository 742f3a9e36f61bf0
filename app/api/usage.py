"""Reading usage: totals, raw records (JSON or CSV), the key's balance, and token estimates.

    GET  /v1/usage                          totals grouped by day, model, mode and/or key
    GET  /v1/usage/records                  raw ledger records, newest first, cursor-paged
    GET  /v1/balance                        budget, spent, reserved, available
    POST /v1/tokenizers/estimate-token-count   prompt tokens of a chat request (Moonshot-compatible)

A key sees its own usage; an admin sees every key's and may filter by `key_id`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from app.api.deps import CurrentPrincipal, GatewayDep
from app.api.error_docs import error_responses
from app.auth.keys import Principal
from app.core.errors import GatewayTimeout, InvalidRequest, PermissionDenied, UpstreamError
from app.metering.prices import format_usd, to_usd
from app.metering.queries import (
    QueryError,
    UsageFilter,
    key_balance,
    parse_bound,
    parse_group_by,
    usage_records_page,
    usage_totals,
)
from app.pipeline.modes import split_model_suffix
from app.pipeline.prepare import load_images, prepare_chat
from app.pipeline.run import CONNECT_ERRORS
from app.protocols.chat.types import ChatCompletionRequest, EstimateTokenCountRequest

router = APIRouter()
log = logging.getLogger("thinkgate")

ERRORS = error_responses(
    {
        400: "A query parameter is malformed (named in error.param)",
        401: "Missing or wrong API key",
        403: "Only an admin key may read other keys' usage",
    }
)
CSV_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV when asked"}
}
STATUSES = Literal["open", "completed", "length", "aborted", "engine_error", "rejected", "interrupted"]
GROUP_FIELDS = ("day", "model", "mode", "key_id", "key_name")
TOKENIZE_FIELDS = ("chat_template_kwargs", "add_generation_prompt", "continue_final_message", "tools")


# -- wire models ----------------------------------------------------------------------------------


class UsageGroup(BaseModel):
    """Totals of one group; only the fields named in `group_by` are present."""

    day: str | None = Field(None, description="UTC day, YYYY-MM-DD")
    model: str | None = None
    mode: str | None = Field(None, description="long or short ('-' for requests refused before a mode)")
    key_id: str | None = None
    key_name: str | None = None
    requests: int = Field(description="Records, whatever their status (rejected included)")
    rejected: int
    prompt_tokens: int
    image_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    cost: float = Field(description="USD (exactly cost_micros / 1e6)")
    cost_micros: int


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageGroup]


class UsageRecord(BaseModel):
    """One request's ledger record."""

    id: str
    key_id: str
    created_at: float = Field(description="unix seconds")
    settled_at: float | None
    instance_id: str
    model: str
    mode: str
    mode_source: str
    effort: str | None
    status: str
    finish_reason: str | None
    error: str | None
    prompt_tokens: int
    image_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    reserved_micros: int
    cost: float
    cost_micros: int
    ttft_ms: float | None
    duration_ms: float | None
    idempotency_key: str | None


class UsageRecordPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page")


class BalanceOut(BaseModel):
    object: Literal["balance"] = "balance"
    budget: float | None = Field(description="USD; null = no limit")
    spent: float
    reserved: float = Field(description="Held by requests still running")
    available: float | None = Field(description="budget - spent - reserved; null = no limit")
    budget_micros: int | None
    spent_micros: int
    reserved_micros: int
    available_micros: int | None


class TokenCount(BaseModel):
    total_tokens: int


class TokenCountOut(BaseModel):
    data: TokenCount


# -- helpers --------------------------------------------------------------------------------------


def _filter(principal: Principal, key_id: str | None, start: str | None, end: str | None) -> UsageFilter:
    if not principal.is_admin and key_id is not None and key_id != principal.key_id:
        raise PermissionDenied("Only an admin key may read the usage of other keys.", param="key_id")
    try:
        return UsageFilter(
            key_id=key_id if principal.is_admin else principal.key_id,
            start=parse_bound(start, "start") if start else None,
            end=parse_bound(end, "end", end=True) if end else None,
        )
    except QueryError as error:
        raise InvalidRequest(str(error), param=error.param, code="invalid_value") from None


def _wants_csv(format: str | None, accept: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return accept is not None and "text/csv" in accept


def _csv(
    rows: Sequence[BaseModel], columns: Sequence[str], filename: str, headers: dict[str, str]
) -> Response:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = row.model_dump()
        if "cost_micros" in values:
            values["cost"] = format_usd(values["cost_micros"])  # exact decimals, never 1.9e-05
        writer.writerow(values)
    headers = {**headers, "content-disposition": f'attachment; filename="{filename}"'}
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


Format = Annotated[Literal["json", "csv"] | None, Query(description="csv, or send Accept: text/csv")]
Accept = Annotated[str | None, Header(include_in_schema=False)]
KeyFilter = Annotated[str | None, Query(description="Admin only: one key's usage (default: every key)")]
Start = Annotated[
    str | None, Query(description="From (inclusive): YYYY-MM-DD (UTC), ISO 8601 time, or unix seconds")
]
End = Annotated[str | None, Query(description="Until: a date includes that whole day; a time is exclusive")]


# -- routes ---------------------------------------------------------------------------------------


@router.get(
    "/v1/usage",
    response_model=UsageList,
    response_model_exclude_none=True,
    responses={**CSV_OK, **ERRORS},
    summary="Usage totals by day, model, mode and/or key",
)
async def usage(
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    start: Start = None,
    end: End = None,
    group_by: Annotated[str, Query(description="Comma-separated: day, model, mode, key")] = "day",
    key_id: KeyFilter = None,
    format: Format = None,
    accept: Accept = None,
) -> Any:
    where = _filter(principal, key_id, start, end)
    try:
        groups = parse_group_by(group_by)
    except QueryError as error:
        raise InvalidRequest(str(error), param=error.param, code="invalid_value") from None
    rows = await usage_totals(gateway.ledger.engine, where, groups)
    data = [UsageGroup(**row, cost=to_usd(row["cost_micros"])) for row in rows]
    if _wants_csv(format, accept):
        fields = [
            name for group in groups for name in (("key_id", "key_name") if group == "key" else (group,))
        ]
        totals = [name for name in UsageGroup.model_fields if name not in GROUP_FIELDS]
        return _csv(data, [*fields, *totals], "usage.csv", {})
    return UsageList(data=data)


@router.get(
    "/v1/usage/records",
    response_model=UsageRecordPage,
    responses={**CSV_OK, **ERRORS},
    summary="Raw usage records, newest first",
)
async def usage_records(
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    start: Start = None,
    end: End = None,
    key_id: KeyFilter = None,
    status: Annotated[STATUSES | None, Query(description="Only records with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Records per page")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    format: Format = None,
    accept: Accept = None,
) -> Any:
    where = _filter(principal, key_id, start, end)
    try:
        rows, next_cursor = await usage_records_page(
            gateway.ledger.engine, where, limit=limit, cursor=cursor, status=status
        )
    except QueryError as error:
        raise InvalidRequest(str(error), param=error.param, code="invalid_value") from None
    data = [UsageRecord(**row, cost=to_usd(row["cost_micros"])) for row in rows]
    if _wants_csv(format, accept):
        headers = {"x-next-cursor": next_cursor} if next_cursor else {}
        return _csv(data, list(UsageRecord.model_fields), "usage-records.csv", headers)
    return UsageRecordPage(data=data, has_more=next_cursor is not None, next_cursor=next_cursor)


@router.get("/v1/balance", response_model=BalanceOut, responses=ERRORS, summary="The calling key's balance")
async def balance(principal: CurrentPrincipal, gateway: GatewayDep) -> BalanceOut:
    found = await key_balance(gateway.ledger.engine, principal.key_id)
    available = found.available_micros
    return BalanceOut(
        budget=None if found.budget_micros is None else to_usd(found.budget_micros),
        spent=to_usd(found.spent_micros),
        reserved=to_usd(found.reserved_micros),
        available=None if available is None else to_usd(available),
        budget_micros=found.budget_micros,
        spent_micros=found.spent_micros,
        reserved_micros=found.reserved_micros,
        available_micros=available,
    )


@router.post(
    "/v1/tokenizers/estimate-token-count",
    response_model=TokenCountOut,
    responses=error_responses(
        {
            400: "Invalid request (the field is named in error.param)",
            401: "Missing or wrong API key",
            403: "The key may not use this mode or effort",
            404: "Unknown model",
            429: "Requests per minute exceeded (rate_limit_exceeded)",
            502: "The engine failed",
            503: "No engine available",
            504: "The engine did not answer in time",
        }
    ),
    summary="Prompt tokens of a chat request, counted by the model's own tokenizer (images included)",
)
async def estimate_token_count(
    body: EstimateTokenCountRequest, principal: CurrentPrincipal, gateway: GatewayDep
) -> TokenCountOut:
    request = ChatCompletionRequest.model_validate(body.model_dump(exclude_none=True))
    gateway.pool.check_model(split_model_suffix(request.model)[0])
    prepared = prepare_chat(request, principal, gateway.profiles, gateway.media)
    # A count reaches the engine: it counts against the key's request rate like a completion, before
    # any image is decoded. It is free, so it takes no budget and no tokens of the minute's allowance.
    if gateway.settings.metering:
        await gateway.limiter.admit(principal, 0)
    await load_images(prepared, gateway.media, gateway.client)
    # The exact prompt the chat request would send: same normalised messages, same template switches.
    tokenize = {"model": prepared.model, "messages": prepared.body["messages"]}
    tokenize.update({name: prepared.body[name] for name in TOKENIZE_FIELDS if name in prepared.body})
    replica = gateway.pool.pick(prepared.model)
    try:
        response = await gateway.client.post(f"{replica.url}/tokenize", json=tokenize, timeout=60.0)
    except CONNECT_ERRORS as exc:
        gateway.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
        raise UpstreamError(f"The engine could not be reached ({type(exc).__name__}).") from exc
    except httpx.TimeoutException as exc:  # connected, but no answer within the header timeout
        gateway.pool.report_failure(replica, f"{type(exc).__name__}: {exc}")
        raise GatewayTimeout(f"The engine did not answer in time ({exc}); retry shortly.") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"The engine failed to count tokens ({type(exc).__name__}).") from exc
    return TokenCountOut(data=TokenCount(total_tokens=_token_count(response)))


def _token_count(response: httpx.Response) -> int:
    if response.status_code >= 400:
        # The engine's words stay in the log: they may name its internals (paths, addresses).
        log.warning("the engine's /tokenize answered %d: %s", response.status_code, response.text[:1000])
        if response.status_code < 500:
            raise InvalidRequest(
                f"The engine refused to count this request's tokens (HTTP {response.status_code}).",
                code="engine_rejected",
            )
        raise UpstreamError(f"The engine failed to count tokens (HTTP {response.status_code}).")
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    count = payload.get("count") if isinstance(payload, dict) else None
    if not isinstance(count, int):
        raise UpstreamError("The engine's /tokenize answer has no token count.")
    return count
