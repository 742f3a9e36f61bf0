"""Reading usage: totals, raw records (JSON or CSV), the key's balance, and token estimates.

    GET  /v1/usage                          totals grouped by day, model, mode and/or key
    GET  /v1/usage/records                  raw ledger records, newest first, cursor-paged
    GET  /v1/balance                        budget, spent, reserved, available
    POST /v1/tokenizers/estimate-token-count   prompt tokens of a chat request (Moonshot-compatible)

A key sees its own usage; an admin sees every key's and may filter by `key_id`. A malformed query
parameter is a 400 naming it (the query layer's QueryError). Wire types: app/protocols/usage/types.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from app.api.deps import CurrentPrincipal, GatewayDep
from app.api.error_docs import error_responses
from app.auth.principal import Principal
from app.core.errors import PermissionDenied
from app.metering.queries import (
    UsageFilter,
    key_balance,
    parse_bound,
    parse_group_by,
    usage_records_page,
    usage_totals,
)
from app.pipeline.token_count import count_prompt_tokens
from app.protocols.chat.adapter import turn_from_chat
from app.protocols.chat.types import ChatCompletionRequest, EstimateTokenCountRequest
from app.protocols.usage.types import (
    BalanceOut,
    RecordStatus,
    TokenCount,
    TokenCountOut,
    UsageGroup,
    UsageList,
    UsageRecord,
    UsageRecordPage,
    to_csv,
)

router = APIRouter()

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

Format = Annotated[Literal["json", "csv"] | None, Query(description="csv, or send Accept: text/csv")]
Accept = Annotated[str | None, Header(include_in_schema=False)]
KeyFilter = Annotated[str | None, Query(description="Admin only: one key's usage (default: every key)")]
Start = Annotated[
    str | None, Query(description="From (inclusive): YYYY-MM-DD (UTC), ISO 8601 time, or unix seconds")
]
End = Annotated[str | None, Query(description="Until: a date includes that whole day; a time is exclusive")]


def _filter(principal: Principal, key_id: str | None, start: str | None, end: str | None) -> UsageFilter:
    if not principal.is_admin and key_id is not None and key_id != principal.key_id:
        raise PermissionDenied("Only an admin key may read the usage of other keys.", param="key_id")
    return UsageFilter(
        key_id=key_id if principal.is_admin else principal.key_id,
        start=parse_bound(start, "start") if start else None,
        end=parse_bound(end, "end", end=True) if end else None,
    )


def _wants_csv(format: str | None, accept: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return accept is not None and "text/csv" in accept


def _csv(body: str, filename: str, headers: dict[str, str]) -> Response:
    headers = {**headers, "content-disposition": f'attachment; filename="{filename}"'}
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)


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
    group_by: Annotated[str, Query(description="Comma-separated: day, model, api, mode, key")] = "day",
    key_id: KeyFilter = None,
    format: Format = None,
    accept: Accept = None,
) -> Any:
    where = _filter(principal, key_id, start, end)
    groups = parse_group_by(group_by)
    data = [UsageGroup.from_row(row) for row in await usage_totals(gateway.ledger.engine, where, groups)]
    if _wants_csv(format, accept):
        return _csv(to_csv(data, UsageGroup.csv_columns(groups)), "usage.csv", {})
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
    status: Annotated[RecordStatus | None, Query(description="Only records with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Records per page")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    format: Format = None,
    accept: Accept = None,
) -> Any:
    where = _filter(principal, key_id, start, end)
    rows, next_cursor = await usage_records_page(
        gateway.ledger.engine, where, limit=limit, cursor=cursor, status=status
    )
    data = [UsageRecord.from_row(row) for row in rows]
    if _wants_csv(format, accept):
        headers = {"x-next-cursor": next_cursor} if next_cursor else {}
        return _csv(to_csv(data, list(UsageRecord.model_fields)), "usage-records.csv", headers)
    return UsageRecordPage(data=data, has_more=next_cursor is not None, next_cursor=next_cursor)


@router.get("/v1/balance", response_model=BalanceOut, responses=ERRORS, summary="The calling key's balance")
async def balance(principal: CurrentPrincipal, gateway: GatewayDep) -> BalanceOut:
    return BalanceOut.from_balance(await key_balance(gateway.ledger.engine, principal.key_id))


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
    total = await count_prompt_tokens(gateway, turn_from_chat(request), principal)
    return TokenCountOut(data=TokenCount(total_tokens=total))
