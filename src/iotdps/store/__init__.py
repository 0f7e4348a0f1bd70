"""Storage adapters for the `Store` port (iotdps.ports).

`open_store(dsn)` is the one entry point: "memory://" gives the in-memory store,
"sqlite:///path" and "postgresql+asyncpg://user@host/db" the SQL store, migrated to the
newest schema on open ("postgresql://" picks asyncpg too; "sqlite+aiosqlite:///", the DSN of
earlier releases, still names the same SQLite store).

SQLite runs on the event loop's own thread through the standard sqlite3 module: its statements
take microseconds (WAL, no fsync per commit), far less than handing each one to a worker thread
and back, which is what aiosqlite did and what dominated the registration path
(bench/PROFILE.md).
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from iotdps.errors import InvalidInput, StoreError
from iotdps.fsutil import private_file
from iotdps.ports import Clock, Store
from iotdps.store._common import DEFAULT_REFUSAL_LIMIT, json_column_text
from iotdps.store.memory import MemoryStore
from iotdps.store.migrate import current_revision, head_revision, upgrade
from iotdps.store.sql import DEFAULT_PRUNE_EVERY, RAW_TRANSACTIONS, SQLITE_BUSY_SLICE_MS, SqlStore, describe_error

__all__ = ["MemoryStore", "SqlStore", "open_store"]

_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+asyncpg"}
# Other spellings that name the same driver; aiosqlite was the SQLite driver of earlier releases.
_ALIASES = {"sqlite+aiosqlite": "sqlite+pysqlite"}
_PG_CONNECT_TIMEOUT = 10.0
# PostgreSQL sessions kept open between units of work. SQLAlchemy's default pool (5, plus 10
# overflow) closes every connection beyond the fifth as it comes back, so 20 registrations in
# flight opened and closed sessions all the time (148 in 10 s of bench/registrations.py),
# each a backend process, its authentication and asyncpg's type setup: most of the database's
# CPU per registration (bench/PROFILE.md). `?pool_size=N&max_overflow=M` on the DSN set them.
_PG_POOL = {"pool_size": 20, "max_overflow": 10}
_PG_POOL_LIMITS = {"pool_size": (1, 1000), "max_overflow": (0, 1000)}


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
    url = _parse(dsn)
    engine = _engine(url, schema)
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


def _parse(dsn: str) -> URL:
    try:
        url = make_url(dsn)
    except ArgumentError:
        # make_url's message repeats the DSN, password and all.
        raise InvalidInput("the store DSN is not a database URL") from None
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        raise InvalidInput("unsupported store DSN (use memory://, sqlite:/// or postgresql+asyncpg://)")
    wanted = _DRIVERS[backend]
    if url.drivername == backend or _ALIASES.get(url.drivername) == wanted:
        url = url.set(drivername=wanted)
    elif url.drivername != wanted:
        raise InvalidInput(f"unsupported database driver; use {wanted}")
    return url


def _engine(url: URL, schema: str | None) -> Engine | AsyncEngine:
    # hide_parameters: statement parameters hold documents with keys; never in errors or logs.
    options: dict[str, Any] = {"hide_parameters": True, "json_serializer": json_column_text}
    if url.get_backend_name() == "sqlite":
        if schema is not None:
            raise InvalidInput("a schema applies to PostgreSQL only")
        if any(name in url.query for name in _PG_POOL_LIMITS):
            raise InvalidInput("pool_size and max_overflow apply to PostgreSQL only")
        # One connection for the process: SQLite has one writer, the store serialises its
        # transactions on the event loop, and an in-memory database lives as long as it does.
        options["poolclass"] = StaticPool
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            _private_sqlite_files(url.database)
        engine = create_engine(url, **options)
        _sqlite_setup(engine)
        return engine
    url, pool = _pool_options(url)
    options.update(pool)
    server_settings = {"application_name": "iotdps"}
    if schema is not None:
        server_settings["search_path"] = schema
    options["connect_args"] = {"timeout": _PG_CONNECT_TIMEOUT, "server_settings": server_settings}
    return create_async_engine(url, **options)


def _pool_options(url: URL) -> tuple[URL, dict[str, int]]:
    """The PostgreSQL pool's size from the DSN's query (the defaults for what it leaves out),
    and the URL without them: asyncpg would take them for connection arguments."""
    options = dict(_PG_POOL)
    for name, (low, high) in _PG_POOL_LIMITS.items():
        raw = url.query.get(name)
        if raw is None:
            continue
        value = int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else -1
        if not low <= value <= high:
            raise InvalidInput(f"the store DSN's {name} must be one whole number from {low} to {high}")
        options[name] = value
    return url.difference_update_query(list(_PG_POOL_LIMITS)), options


def _private_sqlite_files(database: str) -> None:
    """The database holds enrollment keys and group master keys in plain text: it is created
    0600 before SQLite opens it (SQLite would make it 0644 less the umask, in whatever directory
    it is given), and SQLite then creates its -wal and -shm with the same mode. Files an older
    release left readable are narrowed. Errors are left to SQLite's own open."""
    for path in (database, f"{database}-wal", f"{database}-shm"):
        try:
            if path == database:
                private_file(path)
            elif os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        except OSError:
            continue


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver so that we, not pysqlite, say how a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",  # readers do not block the writer
            "PRAGMA synchronous=NORMAL",  # durable at checkpoints; safe with WAL
            "PRAGMA foreign_keys=ON",  # index tables cascade with their group
            # Another process's writer is waited for by SqlStore.begin on the event loop, a
            # few milliseconds at a time, not by sleeping inside sqlite with the loop blocked.
            f"PRAGMA busy_timeout={SQLITE_BUSY_SLICE_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Take the write lock at BEGIN: a read lock upgraded later can fail with SQLITE_BUSY.
        # The store's own connection sends its BEGIN IMMEDIATE itself (SqlStore._transaction).
        if not conn.get_execution_options().get(RAW_TRANSACTIONS):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
