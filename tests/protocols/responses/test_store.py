"""Stored responses on their own: per key, until they expire, deleted once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.errors import NotFound
from app.db.tables import metadata
from app.pipeline.turn import Message
from app.protocols.responses.store import ResponseStore


async def test_a_response_is_kept_for_its_key_until_it_expires(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        store = ResponseStore(engine, retention_s=60)
        history = [Message("user", "hi", "input"), Message("assistant", "hello", "x", reasoning="r")]
        await store.put({"id": "resp_1", "output": []}, "key-a", history)
        assert await store.response("resp_1", "key-a") == {"id": "resp_1", "output": []}
        loaded = await store.history("resp_1", "key-a")
        assert [(m.role, m.content, m.reasoning) for m in loaded] == [
            ("user", "hi", None),
            ("assistant", "hello", "r"),
        ]
        with pytest.raises(NotFound):
            await store.response("resp_1", "key-b")
        with pytest.raises(NotFound) as caught:
            await store.history("resp_1", "key-b")
        assert caught.value.param == "previous_response_id"
        with pytest.raises(NotFound):
            await store.delete("resp_1", "key-b")
        await store.delete("resp_1", "key-a")
        with pytest.raises(NotFound):
            await store.delete("resp_1", "key-a")

        short = ResponseStore(engine, retention_s=0.05, sweep_every_s=0)  # every write sweeps
        await short.put({"id": "resp_2"}, "key-a", history)
        time.sleep(0.1)
        with pytest.raises(NotFound):
            await short.response("resp_2", "key-a")
        await short.put({"id": "resp_3"}, "key-a", history)  # writing deletes what has expired
        async with engine.connect() as conn:
            ids = (await conn.exec_driver_sql("SELECT id FROM stored_responses")).scalars().all()
        assert ids == ["resp_3"]
    finally:
        await engine.dispose()
