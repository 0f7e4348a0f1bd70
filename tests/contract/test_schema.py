"""The shipped migrations build exactly the schema tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.enrollment.models import ServiceSettings
from iotdps.errors import StoreError
from iotdps.store import SqlStore, open_store
from iotdps.store import tables as t
from iotdps.store.migrate import current_revision, head_revision

from .conftest import open_backend


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, t.metadata))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_migrated_schema_matches_tables(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = await open_backend(backend, request, tmp_path)
    try:
        assert isinstance(store, SqlStore)
        assert await current_revision(store.engine) == head_revision()
        if isinstance(store.engine, AsyncEngine):
            async with store.engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
        else:
            with store.engine.connect() as conn:
                assert _diff(conn) == []
    finally:
        await store.close()


async def test_reopening_keeps_data_and_create_false_checks_revision(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'reopen.db'}"
    with pytest.raises(StoreError):
        await open_store(dsn, create=False)  # an empty database is not at the newest revision
    first = await open_store(dsn)
    async with first.begin() as uow:
        await uow.settings.put(ServiceSettings("0ne00000042"))
    await first.close()
    again = await open_store(dsn, create=False)
    async with again.begin() as uow:
        assert await uow.settings.get() == ServiceSettings("0ne00000042")
    await again.close()
