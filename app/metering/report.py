"""`thinkgate usage`: usage totals as a plain-text table, read straight from the ledger."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.metering.prices import format_usd
from app.metering.queries import QueryError, UsageFilter, parse_group_by, parse_since, usage_totals

NUMBERS = (
    ("requests", "REQUESTS"),
    ("rejected", "REJECTED"),
    ("prompt_tokens", "PROMPT"),
    ("completion_tokens", "COMPLETION"),
    ("reasoning_tokens", "REASONING"),
    ("cost_micros", "COST USD"),
)
LABELS = {"day": "DAY", "model": "MODEL", "api": "API", "mode": "MODE", "key_id": "KEY", "key_name": "NAME"}


def _cell(name: str, value: Any) -> str:
    return format_usd(int(value)) if name == "cost_micros" else str(value)


def format_table(rows: Sequence[dict[str, Any]], group_fields: Sequence[str]) -> str:
    """Left-aligned group columns, right-aligned numbers, and a TOTAL line when there are rows."""
    header = [LABELS[name] for name in group_fields] + [label for _, label in NUMBERS]
    body = [
        [str(row[name]) for name in group_fields] + [_cell(n, row[n]) for n, _ in NUMBERS] for row in rows
    ]
    if rows:
        totals = [sum(int(row[name]) for row in rows) for name, _ in NUMBERS]
        first = ["TOTAL"] + [""] * (len(group_fields) - 1) if group_fields else []
        body.append(first + [_cell(name, total) for (name, _), total in zip(NUMBERS, totals, strict=True)])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    groups = len(group_fields)

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < groups else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(line(cells) for cells in [header, *body])


async def print_usage(engine: AsyncEngine, *, key_id: str | None, group_by: str, since: str) -> int:
    """Print usage since `since` (24h, 7d, YYYY-MM-DD) grouped by `group_by`; the exit status."""
    try:
        groups = parse_group_by(group_by, "--group-by")
        start = parse_since(since, "--since")
    except QueryError as error:
        print(f"thinkgate usage: {error}", file=sys.stderr)
        return 2
    rows = await usage_totals(engine, UsageFilter(key_id=key_id, start=start), groups)
    fields = [name for group in groups for name in (("key_id", "key_name") if group == "key" else (group,))]
    if not rows:
        print(f"No usage since {since}{f' for {key_id}' if key_id else ''}.")
        return 0
    print(format_table(rows, fields))
    return 0
