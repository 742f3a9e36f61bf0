"""The Responses API door against the real engine with the bundled model: plain turns, streamed and
not, with the official `openai` client; the usage on the wire equals the ledger's record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support import GatewayProcess, expected_cost, usage_records

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"


@pytest.fixture
def sdk(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key, max_retries=0) as client:
        yield client


def assert_usage_is_the_ledger(gateway: GatewayProcess, response: Any) -> dict[str, Any]:
    (record,) = usage_records(
        gateway.database_url, "id = ?", ("chatcmpl-" + response.id.removeprefix("resp_"),)
    )
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (record["prompt_tokens"], record["completion_tokens"])
    assert usage.output_tokens_details.reasoning_tokens == record["reasoning_tokens"]
    assert usage.input_tokens_details.cached_tokens == record["cached_tokens"]
    assert record["cost_micros"] == expected_cost(record) == round(usage.model_extra["cost"] * 1_000_000)
    assert record["api"] == "responses"
    return dict(record)


def test_a_long_cot_turn(gateway: GatewayProcess, sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model=MODEL,
        input="What is 12+7?",
        reasoning={"effort": "low", "summary": "auto"},
        max_output_tokens=400,
    )
    assert response.status in ("completed", "incomplete")
    record = assert_usage_is_the_ledger(gateway, response)
    assert record["mode"] == "long" and record["reasoning_tokens"] > 0
    reasoning = [item for item in response.output if item.type == "reasoning"]
    assert len(reasoning) == 1 and reasoning[0].content and reasoning[0].content[0].text
    assert reasoning[0].summary[0].text == reasoning[0].content[0].text  # the model's own words
    if response.status == "completed":
        assert "19" in response.output_text


def test_a_streamed_short_cot_turn(gateway: GatewayProcess, sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(
        model=MODEL, input="What is 12+7?", reasoning={"effort": "minimal"}, max_output_tokens=64
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == final.output_text
    assert not [item for item in final.output if item.type == "reasoning"]
    record = assert_usage_is_the_ledger(gateway, final)
    assert record["mode"] == "short" and record["reasoning_tokens"] == 0
