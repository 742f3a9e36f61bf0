"""The OpenAI Agents SDK (its default model, the Responses API) running a function tool through
Thinkgate, in front of the scripted engine (tests/scripted_engine.py): a real model cannot be made
to call the tool on demand."""

from __future__ import annotations

import asyncio

import pytest

from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture, gateway_fixture
from tests.support import GatewayProcess, usage_records

pytestmark = pytest.mark.slow


engine = engine_fixture()
gateway = gateway_fixture()


@pytest.mark.parametrize("streamed", [False, True])
def test_an_agent_runs_a_function_tool(
    gateway: GatewayProcess, engine: ScriptedEngine, streamed: bool
) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # nothing goes to OpenAI's trace servers
    engine.script = Script(
        reasoning_text="I should look it up",
        tool_call=("get_weather", {"city": "Paris"}),
        answer_text="It is {result} in Paris",
    )
    engine.requests.clear()
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return "sunny"

    async def run() -> str:
        client = AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=gateway.api_key, max_retries=0)
        model = OpenAIResponsesModel(model=MODEL, openai_client=client)
        agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather], model=model)
        try:
            if streamed:
                result = Runner.run_streamed(agent, "Weather in Paris?")
                async for _ in result.stream_events():
                    pass
            else:
                result = await Runner.run(agent, "Weather in Paris?")
            return str(result.final_output)
        finally:
            await client.close()

    assert asyncio.run(run()) == "It is sunny in Paris"
    assert calls == ["Paris"]
    chats = [body for body in engine.requests if "stream" in body]  # not the token counts
    assert len(chats) == 2  # the call, then the answer with its result
    assert chats[1]["messages"][-1] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": "call_scripted1",
    }
    rows = usage_records(gateway.database_url, "api = 'responses' AND status = 'completed'")
    assert len(rows) >= 2
