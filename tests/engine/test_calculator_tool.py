"""The calculator tool (app/profiles/calculator.py) on the real engine, through the gateway.

The embedded engine runs the bundled model with `--enable-auto-tool-choice --tool-call-parser hermes`
(from its profile's `[tools] parser`), so a request that offers the calculator with `tool_choice:
"auto"` is served (vLLM answers 400 to it without those flags), and so is the turn after a call: the
call and its result, sent back as the web UI sends them, reach the prompt. Whether the model calls the
tool is its training's business; a call is checked when it comes. The page's side of the loop is in
tests/ui/test_calculator.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.profiles.calculator import CALCULATOR_TOOL, answer_call

pytestmark = pytest.mark.engine

MODEL = "thinkgate-arith"
QUESTION = {"role": "user", "content": "What is 4821*375?"}
CALL: dict[str, Any] = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "calculator", "arguments": '{"expression": "4821*375"}'},
}


def ask(client: httpx.Client, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"model": MODEL, "reasoning_mode": "long", "max_tokens": 48, "messages": messages,
            "tools": [CALCULATOR_TOOL], "tool_choice": "auto"}  # fmt: skip
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert "x-thinkgate-tools" not in response.headers  # offered to the engine, not dropped
    answer: dict[str, Any] = response.json()
    return answer


def test_the_calculator_is_offered_and_its_result_reaches_the_prompt(client: httpx.Client) -> None:
    first = ask(client, [QUESTION])
    choice = first["choices"][0]
    if choice["finish_reason"] == "tool_calls":  # parsed by the engine's hermes parser
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "calculator"
        assert not answer_call(call["function"]["arguments"]).startswith("error: the arguments")
    result = {"role": "tool", "tool_call_id": "call_1", "content": answer_call(CALL["function"]["arguments"])}
    assert result["content"] == "1807875"
    after = ask(client, [QUESTION, {"role": "assistant", "content": None, "tool_calls": [CALL]}, result])
    # The call and its result, with the template's wrapping (a turn each), are in the prompt.
    assert after["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 30
