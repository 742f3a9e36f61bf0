"""Billing where the real engine's behaviour is the point: tools and tool calls in the prompt.

The bundled model's chat template presents tools the Hermes / Qwen3 way, so the engine's own count
of the prompt grows with them; the reservation must cover it, and the ledger, the response's
usage.cost and X-Usage-Cost must all book the engine's count.
"""

from __future__ import annotations

import httpx
import pytest

from app.metering.prices import format_usd
from tests.support import GatewayProcess, expected_cost, usage_records

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"lookup_{i}",
            "description": "Looks a number up.",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
    }
    for i in range(2)
]


def test_tools_and_tool_calls_in_the_prompt_are_reserved_and_billed(
    gateway: GatewayProcess, client: httpx.Client
) -> None:
    plain = {"model": MODEL, "reasoning_mode": "short", "max_tokens": 8,
             "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    bare = client.post("/v1/chat/completions", json=plain)
    assert bare.status_code == 200, bare.text
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup_1", "arguments": '{"n": 12345}'}}
    with_tools = {
        **plain,
        "tools": TOOLS,
        "tool_choice": "none",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "67890"},
            {"role": "user", "content": "hi"},
        ],
    }
    response = client.post("/v1/chat/completions", json=with_tools)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    # The engine counted the tools and the call: hundreds of tokens more than "hi" alone.
    assert usage["prompt_tokens"] > bare.json()["usage"]["prompt_tokens"] + 200
    (record,) = usage_records(gateway.database_url, "id = ?", (response.headers["x-request-id"],))
    assert record["prompt_tokens"] == usage["prompt_tokens"]
    assert record["reserved_micros"] >= record["cost_micros"] == expected_cost(record)
    assert response.headers["x-usage-cost"] == format_usd(record["cost_micros"])
    assert usage["cost"] == record["cost_micros"] / 1_000_000
