"""One SQL unit of work's handle (`SqlTx`): runs its statements, through SQLAlchemy or, when a
statement is prebuilt, on the driver directly (fastpath), and decides when the read cache may
answer for it. `Database` is what every unit shares with its store.

Exactly one of two connections backs a unit: SQLite's synchronous one, whose statements run on
the event loop's thread (microseconds each), or an asyncpg one through SQLAlchemy's async layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Row, Select, Table, bindparam, select, update
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from iotdps.errors import StoreError
from iotdps.ports import Clock
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql import fastpath
from iotdps.store.sql.cache import CACHED_TABLES, ReadCache
from iotdps.store.sql.engine import DB_ERRORS, describe_error

__all__ = ["VERSION_QUERY", "Database", "SqlTx"]

_T = TypeVar("_T")

# Run through SQLAlchemy (its literal 1 keeps it off the raw path) when the transaction of
# begin() could not be started directly (see fastpath.start_pg_transaction): that first
# execution starts it; the statements after it go to asyncpg and need it open.
VERSION_QUERY = select(t.config_version.c.version).where(t.config_version.c.id == 1)

# The same read on the raw path: for read(), which must not start a transaction, and for
# begin() once its transaction has started.
_VERSION_QUERY_RAW = select(t.config_version.c.version).where(t.config_version.c.id == bindparam("k_id"))


class Database:
    """What every unit of work of one store shares: the engine, the clock, the read cache and
    the refusal log's bounds."""

    def __init__(self, engine: Engine | AsyncEngine, clock: Clock, refusal_limit: int, prune_every: int) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.clock = clock
        self.cache = ReadCache(concurrent=self.pg)
        self.refusal_limit = refusal_limit
        self.prune_every = prune_every
        self._refusals_added = 0

    def error(self, exc: BaseException) -> StoreError:
        return describe_error(exc, self.engine.url)

    def count_refusal(self) -> bool:
        """Count one refusal insert; True when it is time to prune."""
        self._refusals_added += 1
        return self._refusals_added % self.prune_every == 0


class SqlTx:
    def __init__(self, db: Database, conn: AsyncConnection | Connection, *, read_only: bool = False) -> None:
        self.db = db
        self.read_only = read_only  # SqlStore.read: no transaction on PostgreSQL, no write lock on SQLite
        # Exactly one of the two: SQLite's connection runs on this thread, asyncpg's awaits.
        self.sync = conn if isinstance(conn, Connection) else None
        self.conn = conn if isinstance(conn, AsyncConnection) else None
        self.pg = db.pg
        self.asyncpg: Any = None  # the asyncpg.Connection under `conn`, once asked for
        self.open = True
        self.dirty = False  # wrote a table the read cache holds (see cache.py)
        self.cache: dict[tuple[Any, ...], Any] | None = None  # the read cache this transaction may use
        # PostgreSQL: config_version (which says whether `cache` may be used) is not read when
        # the unit opens but with its first keyed read (keyed.get) or before its first cached
        # read, whichever comes first: a round trip of its own fewer in each unit that reads
        # a key, as both of a registration's do (bench/PROFILE.md).
        self.version_unread = False
        self.through_sqlalchemy = False  # SQLite: SQLAlchemy ran a statement (and autobegan)
        # (table, *key) -> (etag, created) or None (no row) of keyed rows this transaction has
        # locked, read under SQLite's write lock, or written; put skips reading them again.
        self.known: dict[tuple[str, ...], tuple[str, datetime] | None] = {}
        self.seen: dict[tuple[str, ...], Row[Any] | None] = {}  # (table, *key) -> row, read-only units

    def now(self) -> datetime:
        return rec.to_utc(self.db.clock.now())

    async def start_pg_transaction(self) -> bool:
        """PostgreSQL: begin now, so every statement may go to asyncpg (fastpath)."""
        assert self.conn is not None
        started, self.asyncpg = await fastpath.start_pg_transaction(self.conn)
        return started

    def _check(self, statement: Any) -> None:
        if not self.open:
            raise StoreError("the transaction has ended")
        if self.read_only and not isinstance(statement, Select):
            raise StoreError("a read-only unit of work cannot write")

    async def run(
        self,
        statement: Any,
        params: Sequence[Mapping[str, Any]] | None = None,
        *,
        bind: Mapping[str, Any] | None = None,
    ) -> Result[Any]:
        """Execute; `params` runs it once per mapping (one call), `bind` fills its bind parameters."""
        self._check(statement)
        arguments: Any = list(params) if params is not None else bind
        try:
            if self.sync is not None:
                self.through_sqlalchemy = True
                return self.sync.execute(statement, arguments)
            assert self.conn is not None
            return await self.conn.execute(statement, arguments)
        except DB_ERRORS as exc:
            # Chained for callers that tell an integrity error apart; parameters are hidden.
            raise self.db.error(exc) from exc

    async def fetch(self, shape: tuple[Any, ...], build: Callable[[], Any], bind: Mapping[str, Any]) -> list[Any]:
        """Rows of the prebuilt statement `shape` (see run_prebuilt)."""
        return await self.run_prebuilt(shape, build, bind, rows=True)

    def _prepared(
        self, shape: tuple[Any, ...], build: Callable[[], Any], names: list[str]
    ) -> tuple[Any, fastpath.RawStatement | None]:
        """The statement for `shape` and its compiled form for these bind names (None when
        SQLAlchemy must run it), once this unit of work may run it."""
        statement = fastpath.prebuilt(shape, build)
        self._check(statement)
        raw = fastpath.compiled(statement, shape, names, self.db.engine.dialect)
        return statement, raw

    async def _driver(self) -> Any:
        """The asyncpg.Connection under this unit's connection, asked for once per unit."""
        assert self.conn is not None
        self.asyncpg = await fastpath.asyncpg_connection(self.conn)
        return self.asyncpg

    async def run_prebuilt(
        self, shape: tuple[Any, ...], build: Callable[[], Any], bind: Mapping[str, Any], *, rows: bool = False
    ) -> list[Any]:
        """Execute the statement `build` makes for `shape`, built once, and compiled once: the
        driver (sqlite3 or asyncpg) gets its SQL text and converted arguments directly, inside
        the transaction already begun. SQLAlchemy's per-execution work cost more than the
        database's, and it compiled an INSERT ... ON CONFLICT anew every time (bench/PROFILE.md)."""
        statement, raw = self._prepared(shape, build, list(bind))
        if raw is None:
            result = await self.run(statement, bind=bind)
            return list(result.all()) if rows else []
        try:
            if self.sync is not None:
                found = fastpath.sqlite_rows(self.sync, raw, bind)
            else:
                found = await fastpath.pg_rows(self.asyncpg or await self._driver(), raw, bind)
            return raw.load(found) if rows else []
        except DB_ERRORS as exc:
            raise self.db.error(exc) from exc

    async def run_prebuilt_many(
        self, shape: tuple[Any, ...], build: Callable[[], Any], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """run_prebuilt once per mapping of `rows` (all with the same keys), in one executemany:
        SQLAlchemy's per-row parameter handling cost more than SQLite's insert of a telemetry
        batch (bench/PROFILE.md)."""
        if not rows:
            return
        statement, raw = self._prepared(shape, build, list(rows[0]))
        if raw is None:
            await self.run(statement, rows)
            return
        try:
            if self.sync is not None:
                fastpath.sqlite_many(self.sync, raw, rows)
            else:
                await fastpath.pg_many(self.asyncpg or await self._driver(), raw, rows)
        except DB_ERRORS as exc:
            raise self.db.error(exc) from exc

    async def cached(self, key: tuple[Any, ...], load: Callable[[], Awaitable[_T]]) -> _T:
        """`load()`, or its answer from the store's read cache (cache.py says when)."""
        if self.dirty:
            return await load()
        if self.version_unread:
            found = await self.fetch(("config version raw",), lambda: _VERSION_QUERY_RAW, {"k_id": 1})
            self.version_read(found[0][0] if found else None)
        cache = self.cache
        if cache is None:
            return await load()
        if key in cache:
            return cast(_T, cache[key])
        value = await load()
        cache[key] = value
        return value

    def version_read(self, version: int | None) -> None:
        """config_version as this unit read it, before any row it may take from the cache; None
        (no row: someone emptied the table) means no version to trust, so it reads through."""
        self.version_unread = False
        self.cache = self.db.cache.for_version(version)

    async def wrote(self, table: Table) -> None:
        """Note a write to `table`; the first write to a cached table bumps config_version."""
        if self.read_only:
            raise StoreError("a read-only unit of work cannot write")
        if table.name in CACHED_TABLES and not self.dirty:
            self.dirty = True
            await self.run_prebuilt(
                ("bump",),
                lambda: (
                    update(t.config_version)
                    .where(t.config_version.c.id == 1)
                    .values(version=t.config_version.c.version + 1)
                ),
                {},
            )
