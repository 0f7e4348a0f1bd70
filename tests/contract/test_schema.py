"""The shipped migrations build exactly the schema tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from iotdps.errors import StoreError
from iotdps.ports import Refusal
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import SqlStore, open_store
from iotdps.store import tables as t
from iotdps.store.migrate import _config, current_revision, head_revision

from .conftest import PG_DSN, _pg_exec, open_backend


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


def _to_0003_with_old_refusals(connection: Connection) -> None:
    """Migrate to revision 0003 and write refusals the way it did: one row per attempt."""
    command.upgrade(_config(connection), "0003")
    rows = [("dev-1", "NO_ENROLLMENT", n) for n in range(3)] + [
        ("dev-1", "CHAIN_INVALID", 5),
        ("dev-2", "NO_ENROLLMENT", 6),
    ]
    for rid, reason, n in rows:
        connection.execute(
            text(
                "INSERT INTO refusals (registration_id, at, reason, message, attestation_type, enrollment)"
                " VALUES (:rid, :at, :reason, :message, 'x509', NULL)"
            ),
            {"rid": rid, "at": datetime(2024, 1, 1, 0, 0, n), "reason": reason, "message": f"attempt {n}"},
        )


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_revision_0005_folds_old_refusal_rows_into_entries(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        dsn, schema = f"sqlite:///{tmp_path / 'old.db'}", None
        engine = create_engine(dsn)
        with engine.begin() as conn:
            _to_0003_with_old_refusals(conn)
        engine.dispose()
    else:
        dsn, schema = PG_DSN, f"iotdps_0005_{os.getpid()}_{secrets.token_hex(3)}"
        async_engine = create_async_engine(PG_DSN, connect_args={"server_settings": {"search_path": schema}})
        async with async_engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.run_sync(_to_0003_with_old_refusals)
        await async_engine.dispose()
    store = await open_store(dsn, schema=schema)  # upgrades to the newest revision
    try:
        async with store.begin() as uow:
            found = await uow.refusals.list()
        assert [(r.registration_id, r.reason, r.count, r.message) for r in found] == [
            ("dev-2", "NO_ENROLLMENT", 1, "attempt 6"),
            ("dev-1", "CHAIN_INVALID", 1, "attempt 5"),
            ("dev-1", "NO_ENROLLMENT", 3, "attempt 2"),
        ]
        assert found[2].first_at == datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC) and found[2].peer is None
        # And the entries count on from there.
        async with store.begin() as uow:
            await uow.refusals.add(Refusal("dev-1", "NO_ENROLLMENT", "again", "x509", datetime.now(UTC)))
            assert (await uow.refusals.list("dev-1"))[0].count == 4
    finally:
        await store.close()
        if schema is not None:
            await _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')
