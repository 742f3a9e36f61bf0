"""Auto mode router: the rules on representative prompts, accuracy on the labelled set, bounded cost."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from app.pipeline.autoroute import RouteDecision, route
from bench.open_webui import OPEN_WEBUI_TASKS, render_open_webui_task

PROMPTS = Path(__file__).resolve().parents[2] / "bench" / "router_prompts.jsonl"


@pytest.mark.parametrize(
    "prompt",
    [
        "What is 123 + 456?",
        "Compute 99-7.",
        "12 * 34 = ?",
        "5 × 6",
        "What is 7 times 8?",
        "3 plus 4",
        "what's 1/3 + 1/6",
        "2^10",
        "How much is twelve times eleven?",
        "What is 15% of 240?",
        "Multiply 47 by 23.",
        "17-5=",
    ],
)
def test_arithmetic_for_the_bundled_model_is_long(prompt: str) -> None:
    assert route(prompt) == RouteDecision("long", "arithmetic expression")


def test_image_with_a_problem_prompt_is_long() -> None:
    assert route("Solve the problem in the image.", has_image=True) == RouteDecision(
        "long", "image with a problem prompt"
    )
    assert route("", has_image=True, image_alone="long").mode == "long"  # the bundled model's profile
    assert route("", has_image=True).mode == "short"


def test_image_to_describe_is_short() -> None:
    assert route("Describe this image.", has_image=True) == RouteDecision("short", "image description")
    assert route("What's in this photo?", has_image=True).mode == "short"


def test_the_same_words_without_an_image_follow_the_text_rules() -> None:
    assert route("Solve the problem in the image.").mode == "short"  # nothing to solve was given


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("Write a Python function that checks whether a string is a palindrome.", "code"),
        ("Why does this fail?\n```\nx = [1]\nprint(x[3])\n```", "code"),
        ("Traceback (most recent call last):\n  ...\nKeyError: 'id'", "code"),
        ("SELECT id FROM users WHERE age > 30 -- make it faster", "code"),
        ("How do I reverse a linked list in C?", "code"),
        ("Prove that there are infinitely many primes.", "proof"),
        ("Explain why the product of two odd numbers is odd.", "proof"),
        ("Factor x^2 - 5x + 6", "maths notation"),
        ("Compute \\int_0^1 x^2 \\, dx", "maths notation"),
        ("How many ways can 5 people sit in a row?", "maths"),
        ("Is 221 a prime number?", "maths"),
        ("Convert 72 degrees Fahrenheit to Celsius.", "unit conversion"),
        ("Sam has 12 pens and gives away 5. How many are left?", "word problem"),
        ("On an island of knights and knaves, A says B lies. What are they?", "multi-step logic"),
        ("Ann is taller than Bo and Bo is taller than Cy. Who is shortest?", "multi-step logic"),
    ],
)
def test_long_rules(prompt: str, reason: str) -> None:
    assert route(prompt) == RouteDecision("long", reason)


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("hi", "greeting"),
        ("Good morning!", "greeting"),
        ("I just got a puppy!", "conversational"),
        ("Who wrote Pride and Prejudice?", "conversational"),
        ("When did World War II end?", "conversational"),
        ("What is a prime number?", "definition"),
        ("Explain recursion like I'm five.", "definition"),
        ('Translate "What is 2 + 2?" into French.', "rewriting or translation"),
        ("Rewrite this: we made 3 + 4 sales today lol", "rewriting or translation"),
        ("Summarize this: revenue grew 12% to 4.5M and costs fell 3%.", "summarising"),
        ("Write an email to my landlord saying the heating is broken.", "writing"),
        ("Meet me 10-15 minutes after the 9/11 memorial tour.", "conversational"),
        ("Plan a 3-day trip to Rome.", "conversational"),
        ("", "empty"),
    ],
)
def test_short_rules(prompt: str, reason: str) -> None:
    assert route(prompt) == RouteDecision("short", reason)


def test_decision_is_a_frozen_slotted_value() -> None:
    decision = route("hello")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.mode = "long"  # type: ignore[misc]
    assert not hasattr(decision, "__dict__")


def load_labelled() -> list[dict[str, object]]:
    return [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def accuracy(rows: list[dict[str, object]]) -> float:
    """The labelled set is labelled for the bundled model, whose profile takes an image alone as long."""
    hits = sum(
        route(str(row["prompt"]), has_image=bool(row["has_image"]), image_alone="long").mode == row["label"]
        for row in rows
    )
    return hits / len(rows)


def test_labelled_set_is_large_and_roughly_balanced() -> None:
    rows = load_labelled()
    assert len(rows) >= 240
    long_share = sum(row["label"] == "long" for row in rows) / len(rows)
    assert 0.4 <= long_share <= 0.6
    assert {row["label"] for row in rows} == {"long", "short"}


def test_accuracy_on_the_labelled_set() -> None:
    rows = load_labelled()
    assert accuracy(rows) >= 0.85
    for split in {str(row["split"]) for row in rows}:
        assert accuracy([row for row in rows if row["split"] == split]) >= 0.85, split


@pytest.mark.parametrize(
    "huge",
    [
        "Please read the attached report. " * 32_000,
        "1" * 1_000_000,
        "1+" * 500_000,
        "(" * 1_000_000,
        "a" * 1_000_000,
        "\n    " * 200_000,
        "SELECT " * 150_000,
        "knights " * 130_000,
    ],
    ids=["prose", "digits", "plus-chain", "parens", "one-word", "indents", "sql-words", "keywords"],
)
def test_megabyte_prompts_return(huge: str) -> None:
    assert len(huge) >= 1_000_000
    assert route(huge).mode in ("long", "short")


def test_long_prompt_is_judged_by_its_head_and_tail() -> None:
    filler = "The committee reviewed the annual report in detail. " * 20_000
    assert route(filler + "What is 123 + 456?") == RouteDecision("long", "arithmetic expression")
    assert route("Prove that sqrt(2) is irrational. Context follows. " + filler).mode == "long"
    # Code in the middle of a megabyte of prose is outside the window that is read.
    assert route(filler + "```python\nprint(1)\n```" + filler).mode == "short"


# Open WebUI's background tasks, from its default templates (bench/open_webui.py, verbatim from its
# config.py) rendered as it renders them, over a chat history with arithmetic: without rule 0,
# the quoted sum sends every one of them to long mode (billing reasoning nobody reads).
MATHS_CHAT = [
    {"role": "user", "content": "What is 4821 + 3377?"},
    {"role": "assistant", "content": "The answer is 8198."},
    {"role": "user", "content": "And 96 * 47?"},
    {"role": "assistant", "content": "The answer is 4512."},
]


@pytest.mark.parametrize("task", sorted(OPEN_WEBUI_TASKS))
def test_open_webui_background_tasks_are_short(task: str) -> None:
    prompt = render_open_webui_task(OPEN_WEBUI_TASKS[task], MATHS_CHAT, prompt="What is 12 * 13")
    assert "USER: And 96 * 47?\nASSISTANT: The answer is 4512." in prompt and "{{" not in prompt
    assert route(prompt) == RouteDecision("short", "ui background task")
    # What the rest of the rules make of the same text: the chat's arithmetic.
    assert route(prompt.removeprefix("### Task:")).mode == "long"


def test_the_recorded_open_webui_task_bodies_are_short() -> None:
    """The task requests in tests/data/open_webui/ (built from Open WebUI's source independently)."""
    fixtures = Path(__file__).resolve().parents[1] / "data" / "open_webui"
    for name in ("task_title", "task_tags", "task_follow_ups"):
        body = json.loads((fixtures / f"{name}.json").read_text())
        assert route(body["messages"][-1]["content"]).reason == "ui background task", name


def test_open_webui_emoji_task_is_short() -> None:
    prompt = (
        "Your task is to reflect the speaker's likely facial expression through a fitting emoji. "
        "Interpret emotions from the message and reflect their facial expression using fitting, "
        "diverse emojis (e.g., 😊, 😢, 😡, 😱).\n\nMessage: ```What is 4821 + 3377?```"
    )
    assert route(prompt) == RouteDecision("short", "ui background task")


def test_a_task_heading_alone_is_not_a_background_task() -> None:
    """A user's own "### Task:" problem, with no chat history quoted, is routed by its content."""
    assert route("### Task:\nCompute 4821 + 3377 and explain each carry.").mode == "long"
    assert route("What is 4821 + 3377?\n<chat_history>").mode == "long"
