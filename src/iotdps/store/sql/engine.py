"""The two drivers: an engine for SQLite (sqlite3, on the event loop's thread) or PostgreSQL
(asyncpg), built from a DSN, and what every unit of work needs from the driver layer: which
errors are the database's, how one is told without the password, and how SQLite's single
writer is waited for without blocking the loop.

SQLite runs on the event loop's own thread through the standard sqlite3 module: its statements
take microseconds (WAL, no fsync per commit), far less than handing each one to a worker thread
and back, which is what aiosqlite did and what dominated the registration path
(bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from iotdps.errors import InvalidInput, StoreError
from iotdps.fsutil import private_file
from iotdps.store._common import json_column_text
from iotdps.store._pgdriver import pg_driver_errors, require_pg_driver

__all__ = [
    "DB_ERRORS",
    "INTEGRITY_ERRORS",
    "RAW_TRANSACTIONS",
    "SQLITE_BUSY_SLICE_MS",
    "SQLITE_BUSY_WAIT",
    "describe_error",
    "make_engine",
    "parse_dsn",
    "retry_busy",
    "sqlite_begin",
]

# SQLite: how long one BEGIN waits inside sqlite for another process's writer (the event loop
# is blocked meanwhile), and how long the store keeps trying, between asyncio sleeps.
SQLITE_BUSY_SLICE_MS = 20
SQLITE_BUSY_WAIT = 5.0

# The execution option that marks the store's own SQLite connection, whose transactions the
# store begins and ends itself (see SqlStore._transaction); the engine's "begin" hook skips it.
RAW_TRANSACTIONS = "iotdps_raw_transactions"

# asyncpg comes with the `postgres` extra: without it the SQL store serves SQLite alone.
_PG_ERRORS, _PG_INTEGRITY = pg_driver_errors()
DB_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    *_PG_ERRORS,
    OSError,
    TimeoutError,
)
# What a unique index refusing a row looks like, through SQLAlchemy or straight from the driver.
INTEGRITY_ERRORS: tuple[type[BaseException], ...] = (IntegrityError, sqlite3.IntegrityError, *_PG_INTEGRITY)

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

_T = TypeVar("_T")


def describe_error(exc: BaseException, url: URL) -> StoreError:
    """A StoreError for a driver failure: where, what kind, the driver's words; no password."""
    orig = getattr(exc, "orig", None) or exc
    words = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    if url.password:
        words = words.replace(str(url.password), "***")
    where = url.render_as_string(hide_password=True)
    detail = f": {words[:200]}" if words else ""
    return StoreError(f"database error on {where}: {type(orig).__name__}{detail}")


def parse_dsn(dsn: str) -> URL:
    """The SQL store's DSN as a URL naming one of the two drivers; InvalidInput otherwise."""
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


def make_engine(url: URL, schema: str | None) -> Engine | AsyncEngine:
    """SQLite: a synchronous engine with one connection and the store's pragmas; PostgreSQL:
    an async engine with the store's pool. `schema` (PostgreSQL only) replaces the search_path."""
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
    require_pg_driver()
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


async def retry_busy(attempt: Callable[[], _T]) -> _T:
    """`attempt()`, tried again after asyncio sleeps while another process holds the write lock."""
    deadline = asyncio.get_running_loop().time() + SQLITE_BUSY_WAIT
    pause = 0.002
    while True:
        try:
            return attempt()
        except (OperationalError, sqlite3.OperationalError) as exc:
            words = str(getattr(exc, "orig", None) or exc)
            locked = "locked" in words or "busy" in words
            if not locked or asyncio.get_running_loop().time() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


async def sqlite_begin(engine: Engine) -> Connection:
    """A connection in a new BEGIN IMMEDIATE transaction, waiting out other processes' writers."""

    def attempt() -> Connection:
        conn = engine.connect()
        try:
            conn.begin()
        except BaseException:
            conn.close()
            raise
        return conn

    return await retry_busy(attempt)
