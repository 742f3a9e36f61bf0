"""The held-out mixed set of `bench.router`: what an auto-mode gateway in front of the bundled model
is sent, seeded, and how each answer is graded.

Seven categories, `n` prompts each: arithmetic problems (easy and hard, as text and as an image),
out-of-domain prompts (`training.problems.ood_prompt`), hand-written chat turns (some after an
arithmetic turn), and the background tasks Open WebUI sends on its own around a chat turn, rendered
from its default templates (bench/open_webui.py) over a chat history that holds arithmetic.

The problems come from `training.problems` (`sample_problem`, `text_prompt`, `image_text`) and are
drawn by `training.render.render_problem`, so the set follows the model's domain as it grows.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.open_webui import AFTER_EACH_TURN, OPEN_WEBUI_TASKS, render_open_webui_task
from training import problems as pb
from training.render import render_problem

CATEGORIES = ("text/easy", "text/hard", "image/easy", "image/hard", "ood", "chat", "ui-task")
Grade = Literal["problem", "refusal", "short"]
IMAGE_INSTRUCTIONS = getattr(pb, "IMAGE_INSTRUCTIONS", ("Solve the problem in the image.",))

# Chat turns outside the model's domain, written for this set (not drawn from the training prompts).
CHAT_TURNS = (
    "Hi there! How's your day going?",
    "Thanks, that was helpful.",
    "Can you recommend a good book about the history of Rome?",
    "Who painted the Mona Lisa?",
    "Tell me a joke about cats.",
    "What's a good name for a golden retriever puppy?",
    "How do I make a proper cup of tea?",
    "Write a haiku about autumn leaves.",
    "Good night, see you tomorrow!",
    "What does your name mean?",
)
FOLLOW_UP_TURNS = ("Thanks!", "Great, cheers.", "Nice. Can you tell me a fun fact about octopuses?")


@dataclass(frozen=True)
class Item:
    """One prompt of the set: the request's messages, and how its answer is graded."""

    id: str
    category: str
    messages: list[dict[str, Any]]
    grade: Grade
    problem: pb.Problem | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # request fields the client adds

    @property
    def last_user_text(self) -> tuple[str, bool]:
        """The last user message's text, and whether it carries an image (what the rules read)."""
        content = next(m["content"] for m in reversed(self.messages) if m["role"] == "user")
        if isinstance(content, str):
            return content, False
        texts = [part["text"] for part in content if part["type"] == "text"]
        return "\n".join(texts), any(part["type"] == "image_url" for part in content)


def arithmetic_turn(rng: random.Random) -> list[dict[str, Any]]:
    """A user's arithmetic question and the model's (right) answer, as a client sends them back."""
    problem = pb.sample_problem(rng, rng.choice(("easy", "hard")))
    return [
        {"role": "user", "content": pb.text_prompt(problem, rng)},
        {"role": "assistant", "content": f"The answer is {problem.result}."},
    ]


def _image_url(text: str, rng: random.Random) -> str:
    buffer = io.BytesIO()
    render_problem(text, rng).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _problem(category: str, rng: random.Random, index: int) -> Item:
    kind, split = category.split("/")
    problem = pb.sample_problem(rng, split)
    if kind == "text":
        content: Any = pb.text_prompt(problem, rng)
    else:
        content = [
            {"type": "image_url", "image_url": {"url": _image_url(pb.image_text(problem, rng), rng)}},
            {"type": "text", "text": rng.choice(IMAGE_INSTRUCTIONS)},
        ]
    messages = [{"role": "user", "content": content}]
    return Item(f"{category}-{index}", category, messages, "problem", problem)


def _chat(rng: random.Random, index: int) -> Item:
    if index % 3 == 2:  # a chat turn after an arithmetic one
        messages = [*arithmetic_turn(rng), {"role": "user", "content": rng.choice(FOLLOW_UP_TURNS)}]
    else:
        messages = [{"role": "user", "content": CHAT_TURNS[index % len(CHAT_TURNS)]}]
    return Item(f"chat-{index}", "chat", messages, "refusal")


def _ui_task(rng: random.Random, index: int) -> Item:
    task = AFTER_EACH_TURN[index % len(AFTER_EACH_TURN)]
    history = arithmetic_turn(rng)
    if index % 2:
        history += arithmetic_turn(rng)
    prompt = render_open_webui_task(OPEN_WEBUI_TASKS[task], history)
    messages = [{"role": "user", "content": prompt}]
    extra = {"max_completion_tokens": 1000}  # as Open WebUI sends its tasks
    return Item(f"ui-task-{index}-{task}", "ui-task", messages, "short", extra=extra)


def mixed_set(n: int, seed: int) -> Iterator[Item]:
    """`n` items of each category, the same for the same `n` and `seed`."""
    for category in CATEGORIES:
        rng = random.Random(f"router-{seed}-{category}")
        for index in range(n):
            if "/" in category:
                yield _problem(category, rng, index)
            elif category == "ood":
                messages = [{"role": "user", "content": pb.ood_prompt(rng)}]
                yield Item(f"ood-{index}", "ood", messages, "refusal")
            elif category == "chat":
                yield _chat(rng, index)
            else:
                yield _ui_task(rng, index)


def is_refusal(answer: str) -> bool:
    """The model's answer to something outside its domain: no number at all (its fixed reply has none),
    or its fixed reply, known by the opening every generation of it shares ("I can only solve integer
    arithmetic"; the first generation's goes on to quote an example sum)."""
    opening = str(getattr(pb, "OOD_REPLY", "")).split(":")[0]
    return not any(ch.isdigit() for ch in answer) or bool(opening and answer.startswith(opening))


def is_right(item: Item, answer: str, mode: str) -> bool:
    """A problem: its final integer (`training.problems.grade` where the model has one: a division
    is answered with its quotient and remainder); a prompt outside the domain: a refusal; a background
    task: answered in short mode (a chore nobody reads reasoning for)."""
    if item.problem is not None:
        grade = getattr(pb, "grade", None)
        if grade is not None:
            return bool(grade(item.problem, answer))
        return pb.final_integer(answer) == item.problem.result
    if item.grade == "refusal":
        return is_refusal(answer)
    return mode == "short"
