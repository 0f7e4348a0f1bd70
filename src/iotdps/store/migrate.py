"""Alembic migrations, run programmatically with the scripts shipped inside the package.

Alembic is imported only when a database is behind the newest revision: importing it costs
about 0.4 s of CPU, which every CLI command on a local data dir paid to learn that nothing was
to be done (bench/README.md, "CLI startup"). Which revision is newest is read from the shipped
scripts' `revision`/`down_revision` lines, and which one a database is at from its
`alembic_version` table; tests/unit/store/test_migrate.py holds both to alembic's answers.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.store.sql.engine import sqlite_begin

__all__ = ["current_revision", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).resolve().parent / "migrations"
# Any constant will do: it only has to be the same for every node migrating one database.
_PG_MIGRATION_LOCK = 0x10D9_5000


if TYPE_CHECKING:
    from alembic.config import Config


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _assigned(path: Path) -> dict[str, object]:
    """The module-level `revision` and `down_revision` of one migration script."""
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if target is None and isinstance(node, ast.AnnAssign):
            target = node.target
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and value is not None:
            found[target.id] = ast.literal_eval(value)
    return found


@cache
def head_revision() -> str:
    """The newest shipped revision: the one no other script names as its down_revision."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((_SCRIPTS / "versions").glob("*.py")):
        assigned = _assigned(path)
        if isinstance(assigned.get("revision"), str):
            revisions.add(str(assigned["revision"]))
            down = assigned.get("down_revision")
            parents.update([down] if isinstance(down, str) else list(down) if isinstance(down, tuple) else [])
    heads = revisions - parents
    if len(heads) != 1:  # pragma: no cover - a packaging mistake, caught by the tests
        raise RuntimeError(f"the shipped migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _current(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


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
        from alembic import command

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
