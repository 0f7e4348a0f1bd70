"""Is the store usable? For `/readyz`: reachable, and its schema at the revision this code needs.

Reachable is proven by a real read through the store's own unit of work (the same connection
and locks the service uses). The schema revision is read apart from that connection: on
PostgreSQL from a pooled session, on SQLite through a read-only sqlite3 connection of its own
(on a thread), because the store's one SQLite connection may be inside a transaction of the
service's at any await, where a second transaction on it would fail. WAL lets that second
reader in beside the writer.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.ports import Store
from iotdps.store.migrate import current_revision, head_revision
from iotdps.store.sql import SqlStore

__all__ = ["StoreHealth", "check_store"]

# A store that does not answer within this is not ready (a probe must not hang on a lock).
_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class StoreHealth:
    reachable: bool
    schema_current: bool


@functools.cache
def _head() -> str:
    return head_revision()


async def check_store(store: Store, *, timeout: float = _TIMEOUT) -> StoreHealth:
    """Never raises: a failure is a False, and the reason is the caller's to log (not to show)."""
    try:
        async with asyncio.timeout(timeout):
            async with store.read() as uow:
                await uow.settings.get()
    except Exception:
        return StoreHealth(False, False)
    if not isinstance(store, SqlStore):
        return StoreHealth(True, True)  # the memory store has no schema to fall behind
    try:
        async with asyncio.timeout(timeout):
            revision = await _revision(store)
    except Exception:
        return StoreHealth(True, False)
    return StoreHealth(True, revision == _head())


async def _revision(store: SqlStore) -> str | None:
    engine = store.engine
    if isinstance(engine, AsyncEngine):
        return await current_revision(engine)
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        # Only this process can see an in-memory database; it was migrated when opened.
        return _head()
    return await asyncio.to_thread(_sqlite_revision, database)


def _sqlite_revision(path: str) -> str | None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        conn.close()
    return str(row[0]) if row is not None else None
