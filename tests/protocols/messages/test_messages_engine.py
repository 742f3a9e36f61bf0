"""The Messages API door with the official `anthropic` client against the real engine and the bundled
model: a plain turn, thinking on with a budget, streamed and not, and its usage is the ledger's."""

from __future__ import annotations

import anthropic
import pytest

from tests.support import GatewayProcess, expected_cost, usage_records

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"


@pytest.fixture()
def sdk(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.api_key, max_retries=0, timeout=300)


def check_ledger(
    gateway: GatewayProcess, request_id: str, usage: anthropic.types.Usage, cost: float | None = None
) -> None:
    """`cost`: a stream's, from its message_delta (the SDK keeps the known usage fields only)."""
    (row,) = usage_records(gateway.database_url, "id = ?", (request_id,))
    assert row["api"] == "messages"
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == row["prompt_tokens"] > 0
    assert usage.output_tokens == row["reasoning_tokens"] + row["answer_tokens"] > 0
    cost = (usage.model_extra or {})["cost"] if cost is None else cost
    assert round(cost * 1_000_000) == row["cost_micros"] == expected_cost(row)


def test_a_plain_turn_thinks_signs_and_answers(sdk: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    question = [{"role": "user", "content": "What is 987654 - 123789?"}]
    raw = sdk.messages.with_raw_response.create(
        model=MODEL, max_tokens=300, messages=question,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 100},
    )  # fmt: skip
    message = raw.parse()
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text"], message
    thinking, text = message.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock) and thinking.thinking
    assert thinking.signature.startswith("tg1.")
    assert isinstance(text, anthropic.types.TextBlock) and text.text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens_details is not None
    assert 0 < message.usage.output_tokens_details.thinking_tokens <= 101  # the budget (+ its end token)
    check_ledger(gateway, raw.headers["x-request-id"], message.usage)

    # The signed thinking goes back with the answer; the next turn is short-CoT, streamed.
    follow = [*question, message.to_param(), {"role": "user", "content": "What is 5 + 7?"}]
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=50,
        messages=follow,
        thinking={"type": "disabled"},  # type: ignore[arg-type]
    ) as stream:
        deltas = [event for event in stream if event.type == "message_delta"]
        streamed = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert [block.type for block in streamed.content] == ["text"]
    assert (streamed.model_extra or {})["reasoning_mode"] == "short"
    assert "cost" not in (streamed.model_extra or {})  # message_start's usage has none: it is not final
    check_ledger(gateway, request_id, streamed.usage, (deltas[0].usage.model_extra or {})["cost"])
