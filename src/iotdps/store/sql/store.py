"""SqlStore: the `Store` port over SQLAlchemy 2 Core, sqlite3 (the default) or asyncpg
(several nodes). It opens units of work and ends them; the repositories are in the aggregate
modules beside it.

Concurrency, per engine:
- SQLite has one writer. The store holds one connection and runs its statements on the event
  loop's thread: each takes microseconds (WAL, synchronous=NORMAL: no fsync per commit), and a
  thread hand-off per statement cost far more than the statement (bench/PROFILE.md). Every
  transaction (begin()) starts with BEGIN IMMEDIATE, so it takes the write lock up front
  instead of failing to upgrade a read lock half way (SQLITE_BUSY on commit), and an
  asyncio.Lock serialises this process's units of work so they queue on the event loop. When
  another process holds the write lock, BEGIN gives up after a few milliseconds and the store
  tries again after an asyncio sleep, so the loop keeps serving while it waits (up to
  engine.SQLITE_BUSY_WAIT). A read-only unit (read()) takes a snapshot with a deferred BEGIN
  and never waits for that lock.
- PostgreSQL runs transactions concurrently (READ COMMITTED); read() runs its statements
  without a transaction, which under READ COMMITTED sees the same. Keyed writes lock what they
  read (keyed.py); `registrations.get(for_update=True)` also takes a transaction-scoped
  advisory lock on the id, so it serialises registrations of an id that has no row yet.

Driver failures become StoreError with a message that names the database without its password;
statement parameters (which may hold keys) are never shown (`hide_parameters`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps import metrics
from iotdps.errors import StoreError
from iotdps.ports import Clock, SystemClock
from iotdps.store._checkpoint import BACKSTOP_PAGES, WalCheckpointer
from iotdps.store._common import DEFAULT_REFUSAL_LIMIT
from iotdps.store.sql import fastpath
from iotdps.store.sql.engine import DB_ERRORS, RAW_TRANSACTIONS, retry_busy
from iotdps.store.sql.tx import VERSION_QUERY, Database, SqlTx
from iotdps.store.sql.unit import SqlUnitOfWork

__all__ = ["DEFAULT_PRUNE_EVERY", "SqlStore"]

# Prune the refusal log once every this many inserts (per store object), not on every one.
DEFAULT_PRUNE_EVERY = 100


class SqlStore:
    """`Store` over an engine whose schema is already at the newest revision.

    Build it with `iotdps.store.open_store`, which makes the engine, sets the SQLite pragmas
    and runs the migrations.
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        clock: Clock | None = None,
        refusal_limit: int = DEFAULT_REFUSAL_LIMIT,
        prune_every: int = DEFAULT_PRUNE_EVERY,
    ) -> None:
        if refusal_limit < 1 or prune_every < 1:
            raise ValueError("refusal_limit and prune_every must be at least 1")
        self.engine = engine
        self.dialect = engine.dialect.name
        self.clock: Clock = clock or SystemClock()
        self.refusal_limit = refusal_limit
        self.prune_every = prune_every
        # What every unit of work shares: the engine, the clock, the read cache (cache.py).
        self._db = Database(engine, self.clock, refusal_limit, prune_every)
        self._serial = asyncio.Lock() if self.dialect == "sqlite" else None
        self._closed = False
        self._sqlite: Connection | None = None
        self._checkpointer: WalCheckpointer | None = None

    def error(self, exc: BaseException) -> StoreError:
        return self._db.error(exc)

    # begin() and read() hand out _unit's context manager itself rather than wrapping it in
    # another generator: a registration opens two units, and each generator layer costs.

    def begin(self) -> AbstractAsyncContextManager[SqlUnitOfWork]:
        return self._unit(self._transaction)

    def read(self) -> AbstractAsyncContextManager[SqlUnitOfWork]:
        """A unit of work that only reads (a write raises StoreError). On PostgreSQL its
        statements run without BEGIN and COMMIT, two round trips fewer: under READ COMMITTED,
        which is what a transaction would have had, every statement sees the latest commits
        either way. On SQLite it takes a read snapshot (deferred BEGIN), not the write lock,
        so it never waits for another process's writer."""
        return self._unit(self._reading)

    @asynccontextmanager
    async def _unit(self, opened: Callable[[], AbstractAsyncContextManager[SqlTx]]) -> AsyncIterator[SqlUnitOfWork]:
        if self._closed:
            raise StoreError("the store is closed")
        serial: AbstractAsyncContextManager[Any] = self._serial if self._serial is not None else nullcontext()
        body_error: BaseException | None = None
        async with serial:
            started = time.perf_counter()  # the store's time, not the wait for our turn
            try:
                async with opened() as tx:
                    try:
                        yield SqlUnitOfWork(tx)
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        tx.open = False
            except DB_ERRORS as exc:
                # An OSError from the caller's own block is theirs, not the database's.
                if exc is body_error:
                    raise
                raise self.error(exc) from None
            finally:
                metrics.store_unit("write" if opened == self._transaction else "read", time.perf_counter() - started)

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[SqlTx]:
        if isinstance(self.engine, AsyncEngine):
            # No begin(): the prebuilt statements go to asyncpg directly, in autocommit. A
            # statement SQLAlchemy runs itself would begin a transaction, rolled back on return.
            async with self.engine.connect() as pg_conn:
                tx = SqlTx(self._db, pg_conn, read_only=True)
                tx.version_unread = True
                yield tx
            return
        conn = self._sqlite_connection(self.engine)
        raw = fastpath.sqlite_driver(conn)
        raw.execute("BEGIN")  # deferred: the first read takes a snapshot; no lock to wait for
        tx = SqlTx(self._db, conn, read_only=True)
        try:
            # Read before any row: the rows read are never older than the version (the cache
            # may hold newer rows under it, which the next version's cache replaces).
            tx.cache = self._db.cache.for_version(raw.execute("PRAGMA data_version").fetchone()[0])
            yield tx
        finally:
            if raw.in_transaction:
                raw.execute("COMMIT")  # ends the snapshot; nothing was written
            if tx.through_sqlalchemy:
                conn.rollback()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[SqlTx]:
        """Commit when the block ends normally, roll back when it raises."""
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as pg_conn:
                tx = SqlTx(self._db, pg_conn)
                try:
                    if await tx.start_pg_transaction():
                        tx.version_unread = True
                    else:
                        # This first execution, through SQLAlchemy, starts the transaction.
                        found = await tx.fetch(("config version",), lambda: VERSION_QUERY, {})
                        tx.version_read(found[0][0] if found else None)
                    yield tx
                finally:
                    if tx.dirty:
                        self._db.cache.drop()
            return
        # SQLite: the store's one connection, with BEGIN IMMEDIATE / COMMIT / ROLLBACK sent by us;
        # SQLAlchemy's transaction bookkeeping cost more per registration than SQLite's commit.
        conn = self._sqlite_connection(self.engine)
        raw = fastpath.sqlite_driver(conn)
        await retry_busy(lambda: raw.execute("BEGIN IMMEDIATE"))
        tx = SqlTx(self._db, conn)
        try:
            # Read under the write lock: nobody else commits until we do.
            tx.cache = self._db.cache.for_version(raw.execute("PRAGMA data_version").fetchone()[0])
            yield tx
            raw.execute("COMMIT")
            if self._checkpointer is not None:
                self._checkpointer.committed()
        finally:
            if raw.in_transaction:  # the block raised, or COMMIT failed
                raw.execute("ROLLBACK")
            if tx.through_sqlalchemy:
                # End the transaction SQLAlchemy autobegan on its first statement, so its
                # bookkeeping matches SQLite's again (sqlite3's rollback is a no-op by now).
                conn.rollback()
            if tx.dirty:
                self._db.cache.drop()

    def _sqlite_connection(self, engine: Engine) -> Connection:
        if self._sqlite is None:
            self._sqlite = engine.connect().execution_options(**{RAW_TRANSACTIONS: True})
        return self._sqlite

    def checkpoint_in_background(self) -> None:
        """SQLite in a file: copy the write-ahead log into the database on a thread of its own
        rather than inside a COMMIT on the event loop (see store._checkpoint); for `iotdps up`.
        Does nothing for PostgreSQL or an in-memory database."""
        path = self.engine.url.database
        if isinstance(self.engine, AsyncEngine) or self._checkpointer is not None or not path or path == ":memory:":
            return
        raw = fastpath.sqlite_driver(self._sqlite_connection(self.engine))
        raw.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self._checkpointer = WalCheckpointer(path)
        self._checkpointer.start()

    async def close(self) -> None:
        self._closed = True
        if self._checkpointer is not None:
            # Off the loop: a checkpoint in progress may take a moment to finish.
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if isinstance(self.engine, AsyncEngine):
            await self.engine.dispose()
            return
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)})"
