"""store.migrate reads the head revision and a database's revision without alembic; both must
agree with alembic's own answers, on SQLite and PostgreSQL, and an up-to-date store opens
without importing alembic at all (the CLI's startup cost, bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.store import SqlStore, open_store
from iotdps.store.migrate import _config, current_revision, head_revision

from .conftest import open_backend


def test_head_revision_is_alembics_head() -> None:
    assert head_revision() == ScriptDirectory.from_config(_config()).get_current_head()


def _alembic_current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
async def test_current_revision_is_alembics_answer(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = await open_backend(backend, request, tmp_path)
    try:
        assert isinstance(store, SqlStore)
        ours = await current_revision(store.engine)
        if isinstance(store.engine, AsyncEngine):
            async with store.engine.connect() as conn:
                theirs = await conn.run_sync(_alembic_current)
        else:
            with store.engine.connect() as sync_conn:
                theirs = _alembic_current(sync_conn)
        assert ours == theirs == head_revision()
    finally:
        await store.close()


async def test_a_database_without_tables_is_at_no_revision(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not at the newest revision"):
        await open_store(f"sqlite:///{tmp_path / 'empty.db'}", create=False)


_PROBE = """
import asyncio, json, sys
from iotdps.store import open_store
async def main(dsn):
    store = await open_store(dsn)
    await store.close()
asyncio.run(main(sys.argv[1]))
print(json.dumps(sorted(m for m in sys.modules if m == "alembic" or m.startswith("alembic."))))
"""


def test_opening_an_up_to_date_store_does_not_import_alembic(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'store.db'}"
    runs = [
        subprocess.run([sys.executable, "-c", _PROBE, dsn], capture_output=True, text=True, timeout=120, check=True)
        for _ in range(2)
    ]
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first, "creating the schema should have run alembic"
    assert second == []
