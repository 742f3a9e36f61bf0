"""What the pipeline works on: one request, whichever front door it came through.

A front door (`app/protocols/<api>/adapter.py`) validates its wire format and translates it into a
`Turn`: the conversation as the model's chat template will see it, the reasoning-mode signals the
client sent (each naming the field it came from, so that errors speak the client's own terms), the
sampling settings and the output bound. Nothing below the front doors sees a wire type.

The conversation is kept in the engine's own vocabulary (chat messages with text and image parts,
tool calls): every engine Thinkgate drives speaks OpenAI's chat format, so it is the one format the
pipeline needs; the Responses and Messages doors translate into it as the Chat Completions door does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.profiles.profile import Mode


@dataclass(frozen=True, slots=True)
class Signal:
    """One explicit reasoning-mode choice in a request: the field it came from, the mode it asks for
    (None: it only sets a budget or an effort), and the budget or effort it gives."""

    field: str
    mode: Mode | None
    budget: int | None = None
    effort: str | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """An image part, not yet fetched or decoded (that waits until the request is admitted)."""

    url: str  # a data: URL, or an http(s) URL the gateway may fetch
    param: str  # where the part is in the wire request, for errors: "messages[0].content[1].image_url"


Part = str | Image  # a piece of a message's content: text, or an image


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # system, developer, user, assistant or tool
    content: str | list[Part] | None
    param: str  # where the message is in the wire request: "messages[2]"
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape: id, type, function{name, arguments}
    tool_call_id: str | None = None
    reasoning: str | None = None  # past reasoning of an assistant message (replayed per the profile)


@dataclass(slots=True)
class Turn:
    model: str  # as the client named it, a :long / :short suffix included
    messages: list[Message]
    signals: list[Signal] = field(default_factory=list)
    include_reasoning: bool = True  # False: reasoning is generated and billed, not returned
    sampling: dict[str, Any] = field(default_factory=dict)  # sampling and decoding fields, as sent
    max_tokens: int | None = None  # bound on generated tokens per choice (None: the profile's)
    n: int = 1

    def last_user_text(self) -> tuple[str, bool]:
        """The text of the last user message, and whether any message carries an image."""
        has_image = False
        text = ""
        for message in self.messages:
            content = message.content
            if isinstance(content, list):
                has_image = has_image or any(isinstance(part, Image) for part in content)
            if message.role == "user":
                if isinstance(content, str):
                    text = content
                elif isinstance(content, list):
                    text = "\n".join(part for part in content if isinstance(part, str))
        return text, has_image
