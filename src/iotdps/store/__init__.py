"""Storage adapters for the `Store` port (iotdps.ports).

`open_store(dsn)` is the one entry point: "memory://" gives the in-memory store,
"sqlite:///path" and "postgresql+asyncpg://user@host/db" the SQL store, migrated to the
newest schema on open ("postgresql://" picks asyncpg too; "sqlite+aiosqlite:///", the DSN of
earlier releases, still names the same SQLite store).

The two stores are packages cut the same way (a module per aggregate, a unit of work, a
transaction): store/memory/ and store/sql/ (whose engine.py holds the two drivers and whose
fastpath.py is the one module that reaches under SQLAlchemy). What both apply alike is in
_common.py (rules), _records.py (documents) and _unit.py (the unit of work's repositories).
"""

from __future__ import annotations

from iotdps.errors import StoreError
from iotdps.ports import Clock, Store
from iotdps.store._common import DEFAULT_REFUSAL_LIMIT
from iotdps.store.memory import MemoryStore
from iotdps.store.migrate import current_revision, head_revision, upgrade
from iotdps.store.sql import DEFAULT_PRUNE_EVERY, SqlStore, describe_error
from iotdps.store.sql.engine import make_engine, parse_dsn

__all__ = ["MemoryStore", "SqlStore", "open_store"]


async def open_store(
    dsn: str,
    *,
    create: bool = True,
    schema: str | None = None,
    clock: Clock | None = None,
    refusal_limit: int = DEFAULT_REFUSAL_LIMIT,
    prune_every: int = DEFAULT_PRUNE_EVERY,
    background_checkpoints: bool = False,
) -> Store:
    """Open the store `dsn` names.

    `create`: create or migrate the schema to the newest revision (else a database that is
    not at the newest revision is a StoreError). `schema`: a PostgreSQL schema to use instead of
    the search_path default. `background_checkpoints`: a long-running process on SQLite
    copies the write-ahead log into the database on a thread of its own, not inside commits
    (store._checkpoint). Connection failures raise StoreError without the password.
    """
    if dsn.startswith("memory:"):
        return MemoryStore(clock=clock, refusal_limit=refusal_limit)
    url = parse_dsn(dsn)
    engine = make_engine(url, schema)
    store = SqlStore(engine, clock=clock, refusal_limit=refusal_limit, prune_every=prune_every)
    try:
        if create:
            await upgrade(engine)
        elif await current_revision(engine) != head_revision():
            raise StoreError("the database schema is not at the newest revision; migrate it first")
        if background_checkpoints:
            store.checkpoint_in_background()
    except StoreError:
        await store.close()
        raise
    except Exception as exc:
        await store.close()
        raise describe_error(exc, url) from None
    return store
