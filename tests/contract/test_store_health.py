"""`check_store` (the store half of /readyz) on every backend: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.store import SqlStore
from iotdps.store.health import StoreHealth, check_store
from iotdps.store.migrate import head_revision

from .conftest import open_backend


async def test_ready_then_moved_then_closed(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = await open_backend(backend, request, tmp_path)
    try:
        assert await check_store(store) == StoreHealth(True, True)
        if isinstance(store, SqlStore):
            # Another node or another release moved the schema: reachable, not ready.
            await _set_revision(store, backend, tmp_path, "r9999_elsewhere")
            assert await check_store(store) == StoreHealth(True, False)
            await _set_revision(store, backend, tmp_path, head_revision())  # the session's schema is shared
            assert await check_store(store) == StoreHealth(True, True)
            # Between the service's own units on SQLite's one connection, the probe still answers.
            async with store.begin() as uow:
                await uow.settings.get()
            assert (await check_store(store)).reachable
    finally:
        await store.close()
    if backend != "memory":
        assert await check_store(store) == StoreHealth(False, False)  # a closed store: no exception


async def _set_revision(store: SqlStore, backend: str, tmp_path: Path, revision: str) -> None:
    update = "UPDATE alembic_version SET version_num = :revision"
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "contract.db") as other:
            other.execute(update.replace(":revision", "?"), (revision,))
        return
    engine = store.engine
    assert isinstance(engine, AsyncEngine)
    async with engine.begin() as conn:
        await conn.execute(text(update), {"revision": revision})
