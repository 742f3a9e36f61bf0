"""The calculator the web UI offers and runs itself (app/ui/js/calculator.js, tools.js, chat.js).

The page carries the same tool definition as app/profiles/calculator.py (checked here by text, no
browser needed) and a port of its evaluator (checked in the browser against the Python one on a list
of expressions, fixed and random). In the browser, through a real gateway: with the calculator on,
the model's call is run by the page, shown in the answer with its result, and sent back as a `tool`
message; the final answer streams into the same bubble; a reload shows it all again; with the
calculator off no tool is offered; and an answer that keeps calling tools stops after five rounds.

The model's side is played by the scripted engine (tests/scripted_engine.py: a calculator call, then
an answer from the tool's result) and, for the endless loop, by the page's own route: the bundled
model as shipped cannot call a tool yet (it is being trained to). What the real engine does with the
tool is in tests/engine/test_calculator_tool.py.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from app.profiles.calculator import CALCULATOR_TOOL, MAX_DEPTH, MAX_LENGTH, answer_call, evaluate
from tests.scripted_engine import MODEL, Script, ScriptedEngine, engine_fixture, gateway_fixture
from tests.support import GatewayProcess
from tests.ui.test_browser import (
    UiTarget,
    ask,
    last_answer,
    message_box,
    shot,
    sign_in,
    wait_answered,
    watched_page,
)

CALCULATOR_JS = Path(__file__).resolve().parents[2] / "app" / "ui" / "js" / "calculator.js"
QUESTION = "What is 4821*375?"


def js_constant(name: str) -> str:
    found = re.search(rf"^export const {name} = (.*);$", CALCULATOR_JS.read_text(encoding="utf-8"), re.M)
    assert found, f"calculator.js has no one-line `export const {name} = …;`"
    return found.group(1)


def test_the_page_offers_the_same_definition_byte_for_byte() -> None:
    """The JSON text in the page's module is the Python definition's, key order included (the model
    reads it in its prompt); the page sends it as JSON.stringify writes it, in that order."""
    assert js_constant("CALCULATOR_TOOL") == json.dumps(CALCULATOR_TOOL)
    assert (int(js_constant("MAX_LENGTH")), int(js_constant("MAX_DEPTH"))) == (MAX_LENGTH, MAX_DEPTH)


def expressions() -> list[str]:
    """Fixed cases, and random ones: numbers of any size, every operator, parentheses, unary minus,
    spaces, now and then a character the calculator refuses or a bracket out of place."""
    fixed = [
        "4821*375", "98765/43", "(98765/43)", "-7/2", "7/-2", "-7/-2", "10/3*3", "1+98765/43", "-(98765/43)",
        "1/0", "5+(3/(2-2))", "0/5", "-0", "2*-3", "--5", "007+1", "", " \t", "+1", "1e3", "٣+1", "😀",
        "4821×375", "2**3", "3 4", "(1+2))", "((1+2)", "7*", "9" * MAX_LENGTH, "9" * (MAX_LENGTH + 1),
        "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH, "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
        "-" * (MAX_DEPTH + 1) + "1", "9" * 99 + "*" + "9" * 100,
    ]  # fmt: skip
    rng = random.Random(20)

    def number() -> str:
        return str(rng.choice([0, 1, 7, 43, 375, 98765, 10**12 + 3, 2**53 + 1, 10**40 + 7]))

    def expression(depth: int = 0) -> str:
        pick = rng.random()
        if depth > 3 or pick < 0.35:
            return number()
        if pick < 0.45:
            return "-" + expression(depth + 1)
        if pick < 0.6:
            return "(" + expression(depth + 1) + ")"
        return expression(depth + 1) + rng.choice(["+", "-", "*", "/", " + ", " / "]) + expression(depth + 1)

    generated = []
    for _ in range(400):
        text = expression()
        if rng.random() < 0.15:  # a slip: a character it refuses, or a bracket or operator out of place
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice("x._()*+") + text[at:]
        generated.append(text)
    return fixed + generated


ARGUMENTS = [
    '{"expression": "4821*375"}', '{"expression": "98765/43", "more": 1}', '{"expression": 4821}', "{}",
    '["4821*375"]', "4821*375", "", "null", '{"expression": "1/0"}', '{"__proto__": {"expression": "1"}}',
]  # fmt: skip


engine = engine_fixture()
gateway = gateway_fixture()


@pytest.fixture(scope="module")
def target(gateway: GatewayProcess) -> UiTarget:
    return UiTarget(gateway.base_url, gateway.api_key, gateway.create_key)


def chat_bodies(page: Page) -> list[dict[str, Any]]:
    """The chat request bodies the page sends from now on, in order."""
    bodies: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


@pytest.mark.browser
@pytest.mark.slow
async def test_the_page_evaluates_as_the_python_calculator_does(browser: Browser, target: UiTarget) -> None:
    cases = expressions()
    async with watched_page(browser, target) as page:
        await page.goto("/")
        answers = await page.evaluate(
            """async ([expressions, argumentTexts]) => {
                const { evaluate, answerCall } = await import("./js/calculator.js");
                return [expressions.map(evaluate), argumentTexts.map(answerCall)];
            }""",
            [cases, ARGUMENTS],
        )
    assert answers[0] == [evaluate(case) for case in cases]
    assert answers[1] == [answer_call(arguments) for arguments in ARGUMENTS]
    assert sum(answer.startswith("error:") for answer in answers[0]) > 20  # both kinds were tried
    assert sum(not answer.startswith("error:") for answer in answers[0]) > 200


@pytest.mark.browser
@pytest.mark.slow
async def test_a_calculator_call_is_run_shown_sent_back_and_answered(
    browser: Browser, target: UiTarget, engine: ScriptedEngine
) -> None:
    engine.script = Script(
        reasoning_text="4821*375 use calculator",
        tool_call=("calculator", {"expression": "4821*375"}),
        answer_text="The answer is {result}.",
    )
    engine.requests.clear()
    async with watched_page(browser, target) as page:
        await sign_in(page, target.api_key)
        calculator = page.get_by_role("checkbox", name="Calculator")
        await expect(calculator).not_to_be_checked()  # off until the user offers it
        await calculator.check()
        bodies = chat_bodies(page)
        await ask(page, QUESTION, "Long")
        await wait_answered(page)

        answer = last_answer(page)
        await expect(answer.locator(".tool-call")).to_have_text("calculator(4821*375) → 1807875")
        await expect(answer.locator("details.round-reasoning summary")).to_have_text(
            re.compile("^Thought for")
        )
        await expect(answer.locator(".answer")).to_have_text("The answer is 1807875.")
        await expect(answer.locator(".stats")).to_contain_text("Prompt 24")  # both requests, 12 each
        await shot(page, "desktop-calculator")
        assert_the_loop_went_as_the_model_asked(bodies, engine)

        # The conversation is saved with its round: a reload shows the call, its result and the answer.
        await page.reload()
        await expect(message_box(page)).to_be_visible()
        await expect(page.locator("li.message.user .bubble")).to_have_text(QUESTION)
        await expect(answer.locator(".tool-call")).to_have_text("calculator(4821*375) → 1807875")
        await expect(answer.locator(".answer")).to_have_text("The answer is 1807875.")
        await expect(calculator).to_be_checked()  # remembered with the conversation

        # Off: no tool is offered, and the model answers without one.
        engine.script = Script(reasoning_text="2+2=4", answer_text="The answer is 4.")
        await page.get_by_role("button", name="New chat").click()
        await calculator.uncheck()
        bodies.clear()
        await ask(page, "What is 2+2?", "Long")
        await wait_answered(page)
        assert len(bodies) == 1 and "tools" not in bodies[0]
        await expect(last_answer(page).locator(".tool-call")).to_have_count(0)
        await expect(last_answer(page).locator(".answer")).to_have_text("The answer is 4.")


def assert_the_loop_went_as_the_model_asked(bodies: list[dict[str, Any]], engine: ScriptedEngine) -> None:
    """Two requests: the question with the tool offered, then the same with the model's call and the
    result the page computed; both in the mode asked for, the definition intact up to the engine."""
    assert len(bodies) == 2, bodies
    first, second = bodies
    assert json.dumps(first["tools"]) == json.dumps(second["tools"]) == json.dumps([CALCULATOR_TOOL])
    assert first["reasoning_mode"] == second["reasoning_mode"] == "long"
    assert first["messages"] == [{"role": "user", "content": QUESTION}]
    question, call, result = second["messages"]
    assert question == first["messages"][0]
    assert call["content"] is None
    assert call["reasoning_content"].split() == ["4821*375", "use", "calculator"]  # this tool loop's
    assert call["tool_calls"] == [
        {
            "id": "call_scripted1",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression":"4821*375"}'},
        }
    ]
    assert result == {"role": "tool", "tool_call_id": "call_scripted1", "content": "1807875"}
    streamed = [request for request in engine.requests if request.get("stream")]
    assert len(streamed) == 2
    assert json.dumps(streamed[0]["tools"]) == json.dumps([CALCULATOR_TOOL])
    assert streamed[1]["messages"][-1] == result


@pytest.mark.browser
@pytest.mark.slow
async def test_an_answer_that_keeps_calling_tools_stops_after_five_rounds(
    browser: Browser, target: UiTarget
) -> None:
    """Every request is answered with a calculator call (the page's own route plays a model that never
    stops): the page runs five rounds, the first call's error shown as such, then stops and says so."""
    bodies: list[dict[str, Any]] = []

    async def always_call(route: Route) -> None:
        bodies.append(json.loads(route.request.post_data or "{}"))
        expression = "1/0" if len(bodies) == 1 else "98765/43"
        await route.fulfill(
            status=200, headers={"content-type": "text/event-stream"}, body=tool_call_stream(expression)
        )

    async with watched_page(browser, target) as page:
        await sign_in(page, target.api_key)
        await page.get_by_role("checkbox", name="Calculator").check()
        await page.route("**/v1/chat/completions", always_call)
        await ask(page, "Count forever", "Long")
        await wait_answered(page)
        answer = last_answer(page)
        calls = answer.locator(".tool-call")
        await expect(calls).to_have_count(6)
        await expect(calls.first).to_have_text("calculator(1/0) → error: division by zero")
        await expect(calls.first).to_have_class(re.compile(r"\bfailed\b"))
        await expect(calls.nth(4)).to_have_text("calculator(98765/43) → 2296 remainder 37")
        await expect(calls.last).to_have_text("calculator(98765/43) → not run")
        await expect(answer.locator(".tool-limit-note")).to_have_text(
            "Stopped: the model still called tools after 5 rounds."
        )
    assert len(bodies) == 6
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user"] + ["assistant", "tool"] * 5
    assert bodies[-1]["messages"][2]["content"] == "error: division by zero"


def tool_call_stream(expression: str) -> str:
    head = {"id": "chatcmpl-loop", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "reasoning_mode": "long", "reasoning_mode_reason": "explicit: reasoning_mode"}  # fmt: skip
    arguments = json.dumps({"expression": expression})
    call = {"index": 0, "id": "call_loop", "type": "function",
            "function": {"name": "calculator", "arguments": arguments}}  # fmt: skip
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
             "completion_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip
    deltas = [{"reasoning_content": "again"}, {"tool_calls": [call]}]
    events = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in deltas]
    events += [
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": usage},
    ]
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
