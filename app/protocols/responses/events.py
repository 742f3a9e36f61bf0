"""The Responses API's streaming events for one run, as the official SDKs consume them.

response.created, response.in_progress; per output item response.output_item.added, its content
(reasoning: response.content_part.added, response.reasoning_text.delta/done, and the summary's
response.reasoning_summary_part.added, .reasoning_summary_text.delta/done when asked for; message:
response.content_part.added, response.output_text.delta/done; function_call:
response.function_call_arguments.delta/done), response.content_part.done, response.output_item.done;
then response.completed, response.incomplete or response.failed, with usage. Every event has a
`sequence_number`. The pipeline's chunks are chat chunks: a `Plain` (one piece of text, its JSON
bytes) or a dict whose choices[0].delta has reasoning_content, content or tool_calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.pipeline.run import Chunk
from app.protocols.responses import output
from app.protocols.sse import FLUSH


class EventStream:
    def __init__(self, final: output.Final) -> None:
        self.final = final
        completion = self.completion = final.completion
        request = self.request = final.request
        self.seal = final.seal
        self.sequence = 0
        self.rid = output.response_id(completion.request_id)
        self.rs_id, self.msg_id, self.fc_prefix = output.item_ids(self.rid)
        self.items: list[dict[str, Any]] = []  # the finished output items
        self.kind: str | None = None  # the open item: reasoning, message or function_call
        # The open item's text (or arguments): str, or the engine's JSON string literals (bytes).
        self.text: list[str | bytes] = []
        self.delta_frame = (b"", b"", b"")  # the open text item's delta event, around its text
        self.call: dict[str, Any] = {}  # the open function call (id, function{name})
        self.call_index = -1
        self.summary = request.reasoning is not None and bool(
            request.reasoning.summary or request.reasoning.generate_summary
        )

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    async def frames(self) -> AsyncIterator[bytes]:
        completion = self.completion
        start = output.envelope(completion, self.request, "in_progress", [])
        yield self.event("response.created", response=start) + self.event(
            "response.in_progress", response=start
        )
        async for batch in completion.chunks():
            events = self.batch(batch)
            if events:
                yield b"".join(events)
        closing = self.close_item()
        if closing:
            yield b"".join(closing)
        yield FLUSH
        await completion.finish(disconnected=False)
        body = await self.final.kept()
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            body["status"], "response.failed"
        )
        yield self.event(kind, response=body)

    def batch(self, batch: list[Chunk]) -> list[bytes]:
        events: list[bytes] = []
        for chunk in batch:
            if isinstance(chunk, tuple):  # a Plain: framed around the engine's text bytes when it can be
                kind = "reasoning" if chunk[0] else "message"
                if kind == self.kind and not (self.summary and kind == "reasoning"):
                    events.append(self.plain_delta(chunk[1]))
                else:
                    events += self.text_delta(kind, orjson.loads(chunk[1]))
                continue
            for choice in chunk.get("choices") or ():
                if int(choice.get("index") or 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                if thought := delta.get("reasoning_content"):
                    events += self.text_delta("reasoning", thought)
                if content := delta.get("content"):
                    events += self.text_delta("message", content)
                for fragment in delta.get("tool_calls") or ():
                    events += self.call_delta(fragment)
        return events

    def item(self) -> tuple[int, str]:
        """The open item's output index and id."""
        index = len(self.items)
        if self.kind == "reasoning":
            return index, self.rs_id
        if self.kind == "message":
            return index, self.msg_id
        return index, f"{self.fc_prefix}{self.call_index}"

    def text_delta(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self.kind != kind:
            events += self.close_item()
            events += self.open_item(kind)
        index, item_id = self.item()
        self.text.append(text)
        where = {"item_id": item_id, "output_index": index}
        if kind == "reasoning":
            events.append(self.event("response.reasoning_text.delta", **where, content_index=0, delta=text))
            if self.summary:
                events.append(
                    self.event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=text)
                )
        else:
            events.append(
                self.event("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])
            )
        return events

    def plain_delta(self, text: bytes) -> bytes:
        """The open text item's delta event around `text`, the engine's JSON string literal: the same
        bytes `event` would write (its keys in the same order), without parsing or serialising."""
        self.text.append(text)
        sequence = str(self.sequence).encode()
        self.sequence += 1
        head, middle, tail = self.delta_frame
        return head + sequence + middle + text + tail

    def call_delta(self, fragment: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        index = int(fragment.get("index") or 0)
        function = fragment.get("function") or {}
        if self.kind != "function_call" or index != self.call_index:
            events += self.close_item()
            self.call_index = index
            self.call = {"id": fragment.get("id"), "function": {"name": function.get("name") or ""}}
            events += self.open_item("function_call")
        elif function.get("name"):
            self.call["function"]["name"] += function["name"]
        if arguments := function.get("arguments"):
            self.text.append(arguments)
            out_index, item_id = self.item()
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=out_index,
                    delta=arguments,
                )
            )
        return events

    def open_item(self, kind: str) -> list[bytes]:
        self.kind, self.text = kind, []
        index, item_id = self.item()
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        located = orjson.dumps({"item_id": item_id, "output_index": index, "content_index": 0})[1:-1]
        self.delta_frame = (
            b"event: " + name.encode() + b'\ndata: {"type":"' + name.encode() + b'","sequence_number":',
            b"," + located + b',"delta":',
            b"}\n\n" if kind == "reasoning" else b',"logprobs":[]}\n\n',
        )
        if kind == "reasoning":
            item = output.reasoning_item(item_id, "", self.request, None, "in_progress")
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
        elif kind == "message":
            item = output.message_item(item_id, "", "in_progress")
            item["content"] = []
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            call = {**self.call, "function": {**self.call["function"], "arguments": ""}}
            item = output.call_item(item_id, call, "in_progress")
            return [self.event("response.output_item.added", output_index=index, item=item)]
        where = {"item_id": item_id, "output_index": index}
        events = [
            self.event("response.output_item.added", output_index=index, item=item),
            self.event("response.content_part.added", **where, content_index=0, part=part),
        ]
        if kind == "reasoning" and self.summary:
            summary = {"type": "summary_text", "text": ""}
            events.append(
                self.event("response.reasoning_summary_part.added", **where, summary_index=0, part=summary)
            )
        return events

    def close_item(self) -> list[bytes]:
        kind = self.kind
        if kind is None:
            return []
        index, item_id = self.item()
        text = "".join(orjson.loads(piece) if isinstance(piece, bytes) else piece for piece in self.text)
        where = {"item_id": item_id, "output_index": index}
        events: list[bytes] = []
        if kind == "reasoning":
            item = output.reasoning_item(item_id, text, self.request, self.seal)
            part = item["content"][0] if item["content"] else {"type": "reasoning_text", "text": ""}
            events.append(self.event("response.reasoning_text.done", **where, content_index=0, text=text))
            events.append(self.event("response.content_part.done", **where, content_index=0, part=part))
            if self.summary:
                summary = {"type": "summary_text", "text": text}
                events.append(
                    self.event("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
                )
                events.append(
                    self.event("response.reasoning_summary_part.done", **where, summary_index=0, part=summary)
                )
        elif kind == "message":
            item = output.message_item(item_id, text)
            events.append(
                self.event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            )
            events.append(
                self.event("response.content_part.done", **where, content_index=0, part=item["content"][0])
            )
        else:
            call = {**self.call, "function": {**self.call["function"], "arguments": text}}
            item = output.call_item(item_id, call)
            events.append(self.event("response.function_call_arguments.done", **where, arguments=text))
            events.append(self.event("response.output_item.done", output_index=index, item=item))
            self.items.append(item)
            self.kind = None
            return events
        events.append(self.event("response.output_item.done", output_index=index, item=item))
        self.items.append(item)
        self.kind = None
        return events


async def replayed_events(stored: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stored response (an Idempotency-Key retry) as a short stream: created, the items, completed."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    yield event("response.created", response={**stored, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(stored.get("output") or []):
        yield event("response.output_item.added", output_index=index, item=item)
        yield event("response.output_item.done", output_index=index, item=item)
    kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
        str(stored.get("status")), "response.failed"
    )
    yield event(kind, response=stored)
