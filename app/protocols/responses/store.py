"""Stored responses (`store`, the default): the `response` object, the conversation through it and
its request's input items, per API key, kept `responses_retention_days`; read by
`previous_response_id`, GET /v1/responses/{id} and GET /v1/responses/{id}/input_items, removed by
DELETE. A response of another key is not found (404), as is an expired one. Expired rows are
deleted with a write now and then (at most once a minute).

A write is one op (`app/db/ops.py`): on SQLite it rides in the ledger's batches (`db/batch.py`),
with the settlements of the same moment, instead of a transaction of its own per response.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.errors import NotFound
from app.db.batch import SqliteWriter
from app.db.ops import Connection, Op, run_one
from app.pipeline.turn import Image, Message, Part

HISTORY_PARAM = "previous_response_id"


def _not_found(response_id: str, param: str | None) -> NotFound:
    return NotFound(f"No response {response_id!r} is stored for this API key.", param=param)


def _check_id(response_id: str, param: str | None) -> None:
    """An id no response can have (longer than the column, or with a NUL, which PostgreSQL's text
    refuses) is not found, before the database is asked."""
    if len(response_id) > 64 or "\x00" in response_id:
        raise _not_found(response_id[:64], param)


SWEEP_EVERY_S = 60.0  # how often a write also deletes the expired rows

_INSERT = (
    "INSERT INTO stored_responses "
    "(id, key_id, created_at, expires_at, response_json, history_json, input_json) "
    "VALUES (:id, :key_id, :now, :expires, :response, :history, :input)"
)
_SWEEP = "DELETE FROM stored_responses WHERE expires_at < :now"


class PutOp(Op):
    """Store one response (and, now and then, delete the expired ones)."""

    __slots__ = ("row", "sweep")

    def __init__(self, row: dict[str, Any], sweep: bool) -> None:
        self.row = row
        self.sweep = sweep

    def apply(self, con: Connection) -> None:
        if self.sweep:
            con.execute(_SWEEP, {"now": self.row["now"]})
        con.execute(_INSERT, self.row)


class ResponseStore:
    def __init__(
        self,
        engine: AsyncEngine,
        retention_s: float,
        writer: SqliteWriter | None = None,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self.engine = engine
        self.retention_s = retention_s
        self.writer = writer  # the SQLite batcher, when the database is SQLite
        self.sweep_every_s = sweep_every_s
        self._swept = 0.0

    async def put(
        self,
        response: dict[str, Any],
        key_id: str,
        history: list[Message],
        input_items: list[dict[str, Any]] | None = None,
    ) -> None:
        now = time.time()
        sweep = now - self._swept >= self.sweep_every_s
        if sweep:
            self._swept = now
        row = {
            "id": response["id"],
            "key_id": key_id,
            "now": now,
            "expires": now + self.retention_s,
            "response": orjson.dumps(response).decode(),
            "history": orjson.dumps([_dump(m) for m in history]).decode(),
            "input": orjson.dumps(input_items or []).decode(),
        }
        op = PutOp(row, sweep)
        if self.writer is not None:
            await self.writer.submit(op)  # not deferred: the client waits for it (response.completed)
        else:
            await run_one(self.engine, op)

    async def _stored(self, response_id: str, key_id: str, column: str, param: str | None) -> Any:
        """One stored JSON column of a response of this key (`response_json`, `history_json` or
        `input_json`: only the one asked for is read, the others may hold images)."""
        _check_id(response_id, param)
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT {column} FROM stored_responses "
                    "WHERE id = :id AND key_id = :key_id AND expires_at >= :now"
                ),
                {"id": response_id, "key_id": key_id, "now": time.time()},
            )
            row = result.fetchone()
        if row is None:
            raise _not_found(response_id, param)
        return orjson.loads(row[0]) if row[0] else None

    async def response(self, response_id: str, key_id: str) -> dict[str, Any]:
        stored: dict[str, Any] = await self._stored(response_id, key_id, "response_json", None)
        return stored

    async def history(self, response_id: str, key_id: str) -> list[Message]:
        return [_load(m) for m in await self._stored(response_id, key_id, "history_json", HISTORY_PARAM)]

    async def input_items(self, response_id: str, key_id: str) -> list[dict[str, Any]]:
        """The input items of the response's request, in the order they were sent (none stored for a
        response from before migration 0006)."""
        items: list[dict[str, Any]] = await self._stored(response_id, key_id, "input_json", None) or []
        return items

    async def delete(self, response_id: str, key_id: str) -> None:
        _check_id(response_id, None)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(
                    "DELETE FROM stored_responses WHERE id = :id AND key_id = :key_id AND expires_at >= :now"
                ),
                {"id": response_id, "key_id": key_id, "now": time.time()},
            )
        if result.rowcount == 0:
            raise _not_found(response_id, None)


def conversation(messages: list[Message], response: dict[str, Any]) -> list[Message]:
    """The conversation through a finished response, for the next turn: its messages (without the
    request's instructions, which do not carry over) and the response's output as one assistant
    message (answer, tool calls, and the reasoning, for the pipeline to use or drop)."""
    history = [m for m in messages if m.param != "instructions"]
    reasoning: list[str] = []
    answer: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if item["type"] == "reasoning":
            reasoning.extend(part["text"] for part in item.get("content") or [])
        elif item["type"] == "message":
            answer.extend(part.get("text", "") for part in item.get("content") or [])
        elif item["type"] == "function_call":
            function = {"name": item["name"], "arguments": item["arguments"]}
            calls.append({"id": item["call_id"], "type": "function", "function": function})
    history.append(
        Message(
            "assistant",
            "".join(answer) if answer or not calls else None,
            HISTORY_PARAM,
            tool_calls=calls or None,
            reasoning="".join(reasoning) or None,
        )
    )
    return history


def _dump(message: Message) -> dict[str, Any]:
    content: Any = message.content
    if isinstance(content, list):
        content = [{"image_url": p.url} if isinstance(p, Image) else {"text": p} for p in content]
    out = {
        "role": message.role,
        "content": content,
        "name": message.name,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
        "reasoning": message.reasoning,
    }
    return {k: v for k, v in out.items() if v is not None}


def _load(data: dict[str, Any]) -> Message:
    content = data.get("content")
    if isinstance(content, list):
        parts: list[Part] = [
            Image(p["image_url"], HISTORY_PARAM) if "image_url" in p else str(p.get("text", ""))
            for p in content
        ]
        content = parts
    return Message(
        data["role"],
        content,
        HISTORY_PARAM,
        name=data.get("name"),
        tool_calls=data.get("tool_calls"),
        tool_call_id=data.get("tool_call_id"),
        reasoning=data.get("reasoning"),
    )
