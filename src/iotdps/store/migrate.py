"""Alembic migrations, run programmatically with the scripts shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.store.sql.engine import sqlite_begin

__all__ = ["current_revision", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).resolve().parent / "migrations"
# Any constant will do: it only has to be the same for every node migrating one database.
_PG_MIGRATION_LOCK = 0x10D9_5000


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migration revisions shipped")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: Engine | AsyncEngine) -> str | None:
    if isinstance(engine, AsyncEngine):
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    with await sqlite_begin(engine) as conn:
        return _current(conn)


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Two nodes starting at once must not both create the tables.
        connection.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    if _current(connection) != head_revision():
        command.upgrade(_config(connection), "head")


async def upgrade(engine: Engine | AsyncEngine) -> None:
    """Migrate to the newest revision, in one transaction."""
    if isinstance(engine, AsyncEngine):
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    with await sqlite_begin(engine) as conn:
        _upgrade(conn)
        conn.commit()
