"""Split raw `<think>…</think>` engine output into reasoning and answer, chunk by chunk.

The rules, which `split_complete` and the streaming `ThinkSplitter` share exactly (the
non-streaming helper is the streaming splitter fed once, so the two can never disagree):

- A think block opens only at the very start of the output (leading whitespace allowed). A
  `<think>` anywhere later is ordinary text.
- With ``in_reasoning=True`` (the chat template already wrote `<think>` into the prompt, as
  DeepSeek-R1 and QwQ templates do) the output starts inside the block: everything before the
  first `</think>` is reasoning, and a repeated `<think>` at the very start is swallowed.
- A stray `</think>` at the very start with no opening tag closes an empty block; the rest is the
  answer. Without ``in_reasoning=True`` an output that does not start with a tag is all answer:
  a stream cannot wait for a closing tag that may never come, so the caller must say when the
  template opened the block.
- Like vLLM's qwen3 / deepseek_r1 parsers present it, one newline right after `<think>` and one
  right before `</think>` are dropped from the reasoning, and up to two newlines right after
  `</think>` are dropped from the answer. Nothing else is changed, so
  ``"<think>\\n" + r + "\\n</think>\\n\\n" + a`` splits back into exactly ``(r, a)``.
- A block still open at the end of the stream is all reasoning (e.g. the token budget ran out).

`feed` is O(len(chunk)): it only ever holds back what could still turn out to be part of a tag
(plus the newline in front of it), never the history.
"""

from __future__ import annotations

from enum import Enum, auto

__all__ = ["ThinkSplitter", "split_complete"]


class _State(Enum):
    START = auto()
    REASONING = auto()
    ANSWER_START = auto()
    ANSWER = auto()


# Up to this many newlines after the closing tag separate reasoning from answer ("</think>\n\n").
_ANSWER_SEPARATOR_NEWLINES = 2


def _held_tag_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkSplitter:
    """Streaming splitter: feed engine text deltas, get (reasoning_delta, content_delta) back.

    `saw_think_block` becomes True once a think block is known to exist (always, with
    ``in_reasoning=True``): it tells "no reasoning" (None) from "empty reasoning" ("").
    """

    def __init__(self, start: str = "<think>", end: str = "</think>", *, in_reasoning: bool = False) -> None:
        if not start or not end:
            raise ValueError("think tags must be non-empty")
        self._start = start
        self._end = end
        self._in_reasoning = in_reasoning
        self._state = _State.START
        self._leading_ws = ""  # whitespace seen before the first non-blank character
        self._pending = ""  # text held back: a possible tag prefix (and the newline before it)
        self._strip_first_newline = False
        self._separator_newlines_left = 0
        self.saw_think_block = in_reasoning

    def feed(self, text: str) -> tuple[str, str]:
        """Consume one chunk; return the reasoning and answer text that is now certain."""
        reasoning: list[str] = []
        content: list[str] = []
        self._consume(text, reasoning, content)
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """End of stream: release whatever was held back."""
        reasoning: list[str] = []
        content: list[str] = []
        if self._state is _State.START:
            held = self._leading_ws + self._pending
            self._leading_ws = self._pending = ""
            if self._in_reasoning:
                self._enter_reasoning(held, reasoning, content)
            else:
                content.append(held)
        if self._state is _State.REASONING:
            # An unclosed block: the held newline/tag prefix was reasoning after all.
            reasoning.append(self._pending)
            self._pending = ""
        return "".join(reasoning), "".join(content)

    def _consume(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if not text:
            return
        if self._state is _State.START:
            self._consume_start(text, reasoning, content)
        elif self._state is _State.REASONING:
            self._consume_reasoning(text, reasoning, content)
        elif self._state is _State.ANSWER_START:
            self._consume_answer_start(text, content)
        else:
            content.append(text)

    def _consume_start(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if not self._pending:
            stripped = text.lstrip()
            self._leading_ws += text[: len(text) - len(stripped)]
            text = stripped
            if not text:
                return
        head = self._pending + text
        # Inside a template-opened block a leading close is just the end of (blank) reasoning,
        # which the reasoning path handles, whitespace included.
        tags = (self._start,) if self._in_reasoning else (self._start, self._end)
        for tag in tags:
            if len(head) < len(tag) and tag.startswith(head):
                self._pending = head  # could still become this tag
                return
        leading_ws, self._leading_ws, self._pending = self._leading_ws, "", ""
        if head.startswith(self._start):
            self.saw_think_block = True
            self._enter_reasoning(head[len(self._start) :], reasoning, content)
        elif head.startswith(self._end) and not self._in_reasoning:
            # A close with nothing opened in the output: the template opened an empty block.
            self.saw_think_block = True
            self._enter_answer(head[len(self._end) :], content)
        elif self._in_reasoning:
            self._enter_reasoning(leading_ws + head, reasoning, content)
        else:
            self._state = _State.ANSWER
            content.append(leading_ws + head)

    def _enter_reasoning(self, rest: str, reasoning: list[str], content: list[str]) -> None:
        self._state = _State.REASONING
        self._strip_first_newline = True
        self._consume_reasoning(rest, reasoning, content)

    def _consume_reasoning(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if self._strip_first_newline and text:
            self._strip_first_newline = False
            if text.startswith("\n"):
                text = text[1:]
        buffer = self._pending + text  # _pending is shorter than the end tag, so this stays O(chunk)
        end_at = buffer.find(self._end)
        if end_at >= 0:
            before = buffer[:end_at]
            reasoning.append(before[:-1] if before.endswith("\n") else before)
            self._pending = ""
            self._enter_answer(buffer[end_at + len(self._end) :], content)
            return
        hold = _held_tag_prefix(buffer, self._end)
        if buffer[: len(buffer) - hold].endswith("\n"):
            hold += 1  # the newline right before a closing tag is not reasoning
        self._pending = buffer[len(buffer) - hold :]
        reasoning.append(buffer[: len(buffer) - hold])

    def _enter_answer(self, rest: str, content: list[str]) -> None:
        self._state = _State.ANSWER_START
        self._separator_newlines_left = _ANSWER_SEPARATOR_NEWLINES
        self._consume_answer_start(rest, content)

    def _consume_answer_start(self, text: str, content: list[str]) -> None:
        dropped = 0
        while dropped < len(text) and self._separator_newlines_left and text[dropped] == "\n":
            dropped += 1
            self._separator_newlines_left -= 1
        text = text[dropped:]
        if text or not self._separator_newlines_left:
            self._state = _State.ANSWER
        if text:
            content.append(text)


def split_complete(
    text: str, start: str = "<think>", end: str = "</think>", *, in_reasoning: bool = False
) -> tuple[str | None, str]:
    """Split a whole (non-streamed) output; reasoning is None when there was no think block."""
    splitter = ThinkSplitter(start, end, in_reasoning=in_reasoning)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.flush()
    if not splitter.saw_think_block:
        return None, content + tail_content
    return reasoning + tail_reasoning, content + tail_content
