"""The SQL store: SQLAlchemy 2 Core over sqlite3 (the default) or asyncpg (several nodes).

Concurrency, per engine:
- SQLite has one writer. The store holds one connection and runs its statements on the event
  loop's thread: each takes microseconds (WAL, synchronous=NORMAL: no fsync per commit), and a
  thread hand-off per statement cost far more than the statement (bench/PROFILE.md). Every
  transaction (begin()) starts with BEGIN IMMEDIATE, so it takes the write lock up front
  instead of failing to upgrade a read lock half way (SQLITE_BUSY on commit), and an
  asyncio.Lock serialises this process's units of work so they queue on the event loop. When
  another process holds the write lock, BEGIN gives up after a few milliseconds and the store
  tries again after an asyncio sleep, so the loop keeps serving while it waits (up to
  SQLITE_BUSY_WAIT). A read-only unit (read()) takes a snapshot with a deferred BEGIN and never
  waits for that lock.
- PostgreSQL runs transactions concurrently (READ COMMITTED); read() runs its statements
  without a transaction, which under READ COMMITTED sees the same. A put locks the row it reads
  (SELECT ... FOR UPDATE) before checking the etag; a first insert is an INSERT ... ON CONFLICT
  DO UPDATE that keeps `created`, so two concurrent first writes of one key both succeed and
  leave one consistent row. `registrations.get(for_update=True)` also takes a transaction-scoped
  advisory lock on the id, so it serialises registrations of an id that has no row yet.

Driver failures become StoreError with a message that names the database without its password;
statement parameters (which may hold keys) are never shown (`hide_parameters`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar, cast

import asyncpg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Row,
    Select,
    Table,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Result
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.errors import AlreadyExists, InvalidInput, StoreError
from iotdps.hub.devices import DeviceIdentity
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ids import new_etag, registration_key
from iotdps.ports import (
    C2DRepo,
    CaRepo,
    Clock,
    DeviceCounts,
    DeviceRepo,
    EnrollmentRepo,
    GroupRepo,
    HubSessionRepo,
    LinkedHubRepo,
    Page,
    Refusal,
    RefusalLog,
    RegistrationRepo,
    ServiceCounts,
    SettingsRepo,
    StatisticsRepo,
    TelemetryRepo,
)
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store._checkpoint import BACKSTOP_PAGES, WalCheckpointer
from iotdps.store._common import (
    DEFAULT_REFUSAL_LIMIT,
    SystemClock,
    check_delete,
    check_page_size,
    check_put,
    decode_token,
    dump_doc,
    encode_token,
    refusal_key,
    refusal_source,
)
from iotdps.store._sqlite_binds import sqlite_bind_converter

__all__ = ["RAW_TRANSACTIONS", "SQLITE_BUSY_SLICE_MS", "SqlStore", "describe_error", "sqlite_begin"]

# SQLite: how long one BEGIN waits inside sqlite for another process's writer (the event loop
# is blocked meanwhile), and how long the store keeps trying, between asyncio sleeps.
SQLITE_BUSY_SLICE_MS = 20
SQLITE_BUSY_WAIT = 5.0

# Prune the refusal log once every this many inserts (per store object), not on every one.
DEFAULT_PRUNE_EVERY = 100

_DB_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
# What a unique index refusing a row looks like, through SQLAlchemy or straight from the driver.
_INTEGRITY_ERRORS = (IntegrityError, sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)


def describe_error(exc: BaseException, url: URL) -> StoreError:
    """A StoreError for a driver failure: where, what kind, the driver's words; no password."""
    orig = getattr(exc, "orig", None) or exc
    words = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    if url.password:
        words = words.replace(str(url.password), "***")
    where = url.render_as_string(hide_password=True)
    detail = f": {words[:200]}" if words else ""
    return StoreError(f"database error on {where}: {type(orig).__name__}{detail}")


_T = TypeVar("_T")

# What every registration reads and an operator rarely changes; the store caches reads of these
# tables between transactions (SqlStore._cache_for says when a transaction may use them).
_CACHED_TABLES = frozenset(
    table.name
    for table in (t.service_settings, t.linked_hubs, t.ca_certificates, t.enrollment_groups, t.individual_enrollments)
)

_PREBUILT: dict[tuple[Any, ...], Any] = {}
# Run through SQLAlchemy (its literal 1 keeps it off the raw path) when the transaction of
# begin() could not be started directly (see _SqlTx.start_pg_transaction): that first
# execution starts it; the statements after it go to asyncpg and need it open.
_VERSION_QUERY = select(t.config_version.c.version).where(t.config_version.c.id == 1)


# The same read on the raw path: for read(), which must not start a transaction, and for
# begin() once its transaction has started.
_VERSION_QUERY_RAW = select(t.config_version.c.version).where(t.config_version.c.id == bindparam("k_id"))


def _registration_lock() -> Select[Any]:
    """PostgreSQL's transaction-scoped advisory lock on a registration id's hash, prebuilt (the
    constant is a literal so that the one bind parameter is the key): built per call, it went
    through SQLAlchemy's statement compilation and execution on every registration."""
    return select(
        func.pg_advisory_xact_lock(func.hashtextextended(bindparam("k_key"), literal_column("0"))).label("locked")
    )


def _prebuilt(shape: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement for `shape`, built on first use (a few dozen shapes in all)."""
    statement = _PREBUILT.get(shape)
    if statement is None:
        statement = _PREBUILT[shape] = build()
    return statement


# The execution option that marks the store's own SQLite connection, whose transactions the
# store begins and ends itself (see SqlStore._transaction); the engine's "begin" hook skips it.
RAW_TRANSACTIONS = "iotdps_raw_transactions"


async def _retry_busy(attempt: Callable[[], _T]) -> _T:
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

    return await _retry_busy(attempt)


@dataclass(frozen=True, slots=True)
class _RawStatement:
    """A prebuilt statement compiled once for its driver (sqlite3 or asyncpg): SQL text, bind
    order and SQLAlchemy's own type converters."""

    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    row: Callable[..., Any] | None  # a named tuple type for the selected columns
    results: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, bind: Mapping[str, Any]) -> list[Any]:
        return [bind[name] if convert is None else convert(bind[name]) for name, convert in self.binds]

    def load(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        assert self.row is not None
        results = self.results
        return [self.row(*(v if f is None else f(v) for f, v in zip(results, r, strict=True))) for r in rows]


def _compile_raw(statement: Any, names: Sequence[str], dialect: Dialect) -> _RawStatement | None:
    """`statement` as the driver runs it with the bind parameters `names`; None when SQLAlchemy
    must run it itself (a column default to fill in, for one)."""
    compiled = statement.compile(dialect=dialect, column_keys=[n for n in names if not n.startswith("k_")])
    order = list(compiled.positiontup or ())
    if not set(order) <= set(names):
        return None
    if dialect.name == "sqlite":
        binds = tuple((n, sqlite_bind_converter(compiled.binds[n].type, dialect)) for n in order)
    else:
        binds = tuple((n, compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect)) for n in order)
    columns = list(statement.exported_columns)  # what a SELECT selects or a DML statement returns
    row = namedtuple("_Row", [c.key for c in columns]) if columns else None
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _RawStatement(compiled.string, binds, row, results)


def _key_where(table: Table, key: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    return [table.c[name] == bindparam(f"k_{name}") for name in key]


def _locked(query: Select[Any], lock: bool) -> Select[Any]:
    return query.with_for_update() if lock else query


def _keyed_row(table: Table, key: Mapping[str, Any], lock: bool) -> Select[Any]:
    """A keyed table's row by its key (bind parameters k_<name>), locked for update when `lock`."""
    return _locked(
        select(table.c.doc, table.c.etag, table.c.created, table.c.updated).where(*_key_where(table, key)), lock
    )


class _SqlTx:
    def __init__(self, store: SqlStore, conn: AsyncConnection | Connection, *, read_only: bool = False) -> None:
        self.store = store
        self.read_only = read_only  # SqlStore.read: no transaction on PostgreSQL, no write lock on SQLite
        # Exactly one of the two: SQLite's connection runs on this thread, asyncpg's awaits.
        self.sync = conn if isinstance(conn, Connection) else None
        self.conn = conn if isinstance(conn, AsyncConnection) else None
        self.pg = store.dialect == "postgresql"
        self._asyncpg: Any = None  # the asyncpg.Connection under `conn`, once asked for
        self.open = True
        self.dirty = False  # wrote a table the read cache holds (see SqlStore._cache_for)
        self.cache: dict[tuple[Any, ...], Any] | None = None  # the read cache this transaction may use
        # PostgreSQL: config_version (which says whether `cache` may be used) is not read when
        # the unit opens but with its first keyed read (see get) or before its first cached
        # read, whichever comes first: a round trip of its own fewer in each unit that reads
        # a key, as both of a registration's do (bench/PROFILE.md).
        self.version_unread = False
        self.through_sqlalchemy = False  # SQLite: SQLAlchemy ran a statement (and autobegan)
        # (table, *key) -> (etag, created) or None (no row) of keyed rows this transaction has
        # locked, read under SQLite's write lock, or written; put skips reading them again.
        self.known: dict[tuple[str, ...], tuple[str, datetime] | None] = {}
        self.seen: dict[tuple[str, ...], Row[Any] | None] = {}  # (table, *key) -> row, read-only units

    def now(self) -> datetime:
        return rec.to_utc(self.store.clock.now())

    async def run(
        self,
        statement: Any,
        params: Sequence[Mapping[str, Any]] | None = None,
        *,
        bind: Mapping[str, Any] | None = None,
    ) -> Result[Any]:
        """Execute; `params` runs it once per mapping (one call), `bind` fills its bind parameters."""
        if not self.open:
            raise StoreError("the transaction has ended")
        if self.read_only and not isinstance(statement, Select):
            raise StoreError("a read-only unit of work cannot write")
        arguments: Any = list(params) if params is not None else bind
        try:
            if self.sync is not None:
                self.through_sqlalchemy = True
                return self.sync.execute(statement, arguments)
            assert self.conn is not None
            return await self.conn.execute(statement, arguments)
        except _DB_ERRORS as exc:
            # Chained for callers that tell an integrity error apart; parameters are hidden.
            raise self.store.error(exc) from exc

    async def fetch(self, shape: tuple[Any, ...], build: Callable[[], Any], bind: Mapping[str, Any]) -> list[Any]:
        """Rows of the prebuilt statement `shape` (see run_prebuilt)."""
        return await self.run_prebuilt(shape, build, bind, rows=True)

    def _prepared(
        self, shape: tuple[Any, ...], build: Callable[[], Any], names: list[str]
    ) -> tuple[Any, _RawStatement | Literal[False]]:
        """The statement for `shape` and its compiled form for these bind names (False when
        SQLAlchemy must run it), once this unit of work may run it."""
        statement = _prebuilt(shape, build)
        if not self.open:
            raise StoreError("the transaction has ended")
        if self.read_only and not isinstance(statement, Select):
            raise StoreError("a read-only unit of work cannot write")
        dialect = self.sync.dialect if self.sync is not None else self.store.engine.dialect
        raw = _prebuilt((dialect.name, *shape, *names), lambda: _compile_raw(statement, names, dialect) or False)
        return statement, raw

    async def _adapter(self) -> Any:
        """SQLAlchemy's asyncpg adapter under this unit's connection; keeps the asyncpg
        connection it wraps (`_asyncpg`) for the unit's statements."""
        assert self.conn is not None
        adapted = await self.conn.get_raw_connection()
        self._asyncpg = adapted.driver_connection
        return adapted

    async def _driver(self) -> Any:
        """The asyncpg.Connection under this unit's connection, in SQLAlchemy's transaction.
        Asked for once per unit: each get_raw_connection() is a greenlet switch through
        SQLAlchemy's async layer, and a registration runs up to seven statements."""
        await self._adapter()
        return self._asyncpg

    async def start_pg_transaction(self) -> bool:
        """Send the BEGIN of SQLAlchemy's transaction now (PostgreSQL), so that the statements
        after it may all go to asyncpg directly; False when it could not, and the caller must
        run its first statement through SQLAlchemy, which begins on first use.

        SQLAlchemy's asyncpg adapter begins lazily, on the first statement it executes itself.
        Its `_start_transaction` coroutine is what it awaits then; calling it here saves a
        whole SQLAlchemy execution per write transaction (bench/PROFILE.md). It is a private
        hook: without it (another SQLAlchemy) the store only runs the old, slower way, and the
        contract tests' rollback cases fail if a transaction did not start."""
        adapted = await self._adapter()
        start = getattr(adapted, "_start_transaction", None)
        if start is None or not isinstance(getattr(adapted, "_started", None), bool):
            return False
        if not adapted._started:
            await start()
        return bool(adapted._started)

    async def run_prebuilt(
        self, shape: tuple[Any, ...], build: Callable[[], Any], bind: Mapping[str, Any], *, rows: bool = False
    ) -> list[Any]:
        """Execute the statement `build` makes for `shape`, built once, and compiled once: the
        driver (sqlite3 or asyncpg) gets its SQL text and converted arguments directly, inside
        the transaction already begun. SQLAlchemy's per-execution work cost more than the
        database's, and it compiled an INSERT ... ON CONFLICT anew every time (bench/PROFILE.md)."""
        statement, raw = self._prepared(shape, build, list(bind))
        if raw is False:
            result = await self.run(statement, bind=bind)
            return list(result.all()) if rows else []
        try:
            if self.sync is not None:
                driver: Any = self.sync.connection.driver_connection  # sqlite3.Connection
                found = driver.execute(raw.sql, raw.arguments(bind)).fetchall()
            else:
                pg = self._asyncpg or await self._driver()
                found = await pg.fetch(raw.sql, *raw.arguments(bind))
            return raw.load(found) if rows else []
        except _DB_ERRORS as exc:
            raise self.store.error(exc) from exc

    async def run_prebuilt_many(
        self, shape: tuple[Any, ...], build: Callable[[], Any], rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """run_prebuilt once per mapping of `rows` (all with the same keys), in one executemany:
        SQLAlchemy's per-row parameter handling cost more than SQLite's insert of a telemetry
        batch (bench/PROFILE.md)."""
        if not rows:
            return
        statement, raw = self._prepared(shape, build, list(rows[0]))
        if raw is False:
            await self.run(statement, rows)
            return
        arguments = [raw.arguments(row) for row in rows]
        try:
            if self.sync is not None:
                driver: Any = self.sync.connection.driver_connection  # sqlite3.Connection
                driver.executemany(raw.sql, arguments)
            else:
                pg = self._asyncpg or await self._driver()
                await pg.executemany(raw.sql, arguments)
        except _DB_ERRORS as exc:
            raise self.store.error(exc) from exc

    async def cached(self, key: tuple[Any, ...], load: Callable[[], Awaitable[_T]]) -> _T:
        """`load()`, or its answer from the store's read cache (SqlStore._cache_for says when)."""
        if self.dirty:
            return await load()
        if self.version_unread:
            found = await self.fetch(("config version raw",), lambda: _VERSION_QUERY_RAW, {"k_id": 1})
            self._version_read(found[0][0] if found else None)
        cache = self.cache
        if cache is None:
            return await load()
        if key in cache:
            return cast(_T, cache[key])
        value = await load()
        cache[key] = value
        return value

    def _version_read(self, version: int | None) -> None:
        """config_version as this unit read it, before any row it may take from the cache; None
        (no row: someone emptied the table) means no version to trust, so it reads through."""
        self.version_unread = False
        self.cache = self.store._cache_for(version) if version is not None else None

    async def wrote(self, table: Table) -> None:
        """Note a write to `table`; the first write to a cached table bumps config_version."""
        if self.read_only:
            raise StoreError("a read-only unit of work cannot write")
        if table.name in _CACHED_TABLES and not self.dirty:
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

    # Generic operations over one keyed table ---------------------------------------
    # Their statements are built once per shape, with bind parameters for the key: SQLAlchemy
    # memoises a statement object's cache key, so executing it again skips rebuilding and
    # re-hashing the expression tree, which was most of a keyed read's cost (bench/PROFILE.md).

    @staticmethod
    def _bind(key: Mapping[str, Any]) -> dict[str, Any]:
        return {f"k_{name}": value for name, value in key.items()}

    async def get(self, table: Table, key: Mapping[str, str], *, lock: bool = False) -> Row[Any] | None:
        if not self.read_only:
            return await self._get(table, key, lock=lock and self.pg)
        # A read-only unit answers a key it has read again from what it read: one view of the
        # row for the whole unit, and the caller may read a key early (ProvisioningService.
        # authenticate does, so that PostgreSQL's config version comes with it) at no cost.
        memo = (table.name, *key.values())
        if memo not in self.seen:
            self.seen[memo] = await self._get(table, key, lock=False)
        return self.seen[memo]

    async def _get(self, table: Table, key: Mapping[str, str], *, lock: bool) -> Row[Any] | None:
        # Once the unit has written a cached table it reads through (cached): no version needed,
        # and none of its own uncommitted bump should reach the store's cache.
        found = await self._fetch_with_version(table, key, lock) if self.version_unread and not self.dirty else None
        if found is None:
            found = await self.fetch(
                ("get", table.name, tuple(key), lock), lambda: _keyed_row(table, key, lock), self._bind(key)
            )
        row = found[0] if found else None
        if lock or not self.pg:
            # Locked (PostgreSQL) or read under the write lock (SQLite): still true when this
            # transaction writes the key, so put need not read it again.
            self.known[(table.name, *key.values())] = (row.etag, row.created) if row is not None else None
        return row

    async def _fetch_with_version(self, table: Table, key: Mapping[str, str], lock: bool) -> list[Any] | None:
        """The keyed row (a list of none or one), with config_version read by the same statement
        (PostgreSQL): the version row left-joined to the keyed row, which a CTE reads (and locks:
        FOR UPDATE may not stand on the nullable side of an outer join). The one statement's
        snapshot covers both. None when there is no version row: the caller reads the key by
        itself, and the unit reads through."""

        def build() -> Any:
            found = _keyed_row(table, key, lock).cte("found")
            version = t.config_version
            return (
                select(version.c.version, found.c.doc, found.c.etag, found.c.created, found.c.updated)
                .select_from(version.outerjoin(found, true()))
                .where(version.c.id == bindparam("k_version_row"))
            )

        rows = await self.fetch(
            ("get+version", table.name, tuple(key), lock), build, {**self._bind(key), "k_version_row": 1}
        )
        self._version_read(rows[0].version if rows else None)
        if not rows:
            return None
        return [rows[0]] if rows[0].etag is not None else []  # etag is NOT NULL in every keyed table

    async def put(
        self,
        table: Table,
        key: Mapping[str, str],
        what: str,
        doc: dict[str, Any],
        if_match: str | None,
        columns: Mapping[str, Any] | None = None,
    ) -> tuple[str, datetime, datetime]:
        """Write `doc` (and projection `columns`) under `key`; returns (etag, created, updated)."""
        text = dump_doc(doc, what)  # fails on non-JSON values here, as the memory store does
        await self.wrote(table)
        bind = self._bind(key)
        memo = (table.name, *key.values())
        if memo in self.known:
            current = self.known[memo]
        else:
            found = await self.fetch(
                ("current", table.name, tuple(key), self.pg),
                lambda: _locked(select(table.c.etag, table.c.created).where(*_key_where(table, key)), self.pg),
                bind,
            )
            current = (found[0].etag, found[0].created) if found else None
        check_put(what, current[0] if current else None, current is not None, if_match)
        now = self.now()
        etag = new_etag()
        values = {"doc": text, "etag": etag, "updated": now, **(columns or {})}
        if current is not None:
            await self.run_prebuilt(
                ("update", table.name, tuple(key), tuple(values)),
                lambda: update(table).where(*_key_where(table, key)),
                {**bind, **values},
            )
            created = rec.to_utc(current[1])
            self.known[memo] = (etag, created)
            return etag, created, now
        if not self.pg:
            # SQLite: every transaction began IMMEDIATE, so this one has held the write lock
            # since before it read the key and nobody can have inserted it since: a plain
            # INSERT will do, no ON CONFLICT.
            await self.run_prebuilt(("insert", table.name), table.insert, {**key, "created": now, **values})
            self.known[memo] = (etag, now)
            return etag, now, now

        # No row seen: insert, and if a concurrent transaction inserted the key meanwhile,
        # update its row instead, keeping its `created` (RETURNING says which).
        def upsert() -> Any:
            statement = pg_insert(table)
            return statement.on_conflict_do_update(
                index_elements=list(key), set_={name: statement.excluded[name] for name in values}
            ).returning(table.c.created)

        shape = ("upsert", table.name, tuple(key), tuple(values))
        found = await self.fetch(shape, upsert, {**key, "created": now, **values})
        self.known[memo] = (etag, found[0].created)  # the row is ours (locked) from here on
        return etag, found[0].created, now

    async def delete(self, table: Table, key: Mapping[str, str], what: str, if_match: str | None) -> None:
        await self.wrote(table)
        bind = self._bind(key)
        found = await self.fetch(
            ("etag", table.name, tuple(key), self.pg),
            lambda: _locked(select(table.c.etag).where(*_key_where(table, key)), self.pg),
            bind,
        )
        current = found[0] if found else None
        check_delete(what, current.etag if current else None, current is not None, if_match)
        await self.run_prebuilt(
            ("delete", table.name, tuple(key)), lambda: delete(table).where(*_key_where(table, key)), bind
        )
        self.known[(table.name, *key.values())] = None

    async def page(
        self,
        table: Table,
        key_column: str,
        page_size: int,
        continuation: str | None,
        *filters: ColumnElement[bool],
    ) -> tuple[list[Row[Any]], str | None]:
        check_page_size(page_size)
        after = decode_token(continuation)
        column = table.c[key_column]
        query = select(column, table.c.doc, table.c.etag, table.c.created, table.c.updated).where(*filters)
        if after is not None:
            query = query.where(column > after)
        rows = list((await self.run(query.order_by(column).limit(page_size + 1))).all())
        token = encode_token(rows[page_size - 1][0]) if len(rows) > page_size else None
        return rows[:page_size], token

    async def select_docs(
        self,
        table: Table,
        *filters: ColumnElement[bool],
        order: str,
        shape: str = "",
        bind: Mapping[str, Any] | None = None,
    ) -> list[Row[Any]]:
        """Rows matching `filters`; callers name the filters' `shape` (values go in `bind`) so
        that the statement is built once."""

        def build() -> Any:
            query = select(table.c.doc, table.c.etag, table.c.created, table.c.updated).where(*filters)
            return query.order_by(table.c[order])

        return await self.fetch(("docs", table.name, order, shape), build, bind or {})


def _stamp(row: Row[Any]) -> tuple[str, datetime, datetime]:
    return row.etag, rec.to_utc(row.created), rec.to_utc(row.updated)


class _Enrollments:
    _t = t.individual_enrollments

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> IndividualEnrollment:
        return rec.enrollment_from_doc(row.doc, *_stamp(row))

    async def get(self, registration_id: str) -> IndividualEnrollment | None:
        row = await self._tx.get(self._t, {"registration_id": registration_key(registration_id)})
        return self._load(row) if row else None

    async def put(self, enrollment: IndividualEnrollment, if_match: str | None = None) -> IndividualEnrollment:
        doc = rec.enrollment_to_doc(enrollment)
        stamp = await self._tx.put(
            self._t,
            {"registration_id": registration_key(enrollment.registration_id)},
            f"enrollment {enrollment.registration_id}",
            doc,
            if_match,
            {"attestation_type": enrollment.attestation.type},
        )
        return rec.enrollment_from_doc(doc, *stamp)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        key = {"registration_id": registration_key(registration_id)}
        await self._tx.delete(self._t, key, f"enrollment {registration_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[IndividualEnrollment]:
        rows, token = await self._tx.page(self._t, "registration_id", page_size, continuation)
        return Page([self._load(r) for r in rows], token)

    async def list_x509(self) -> Sequence[IndividualEnrollment]:
        rows = await self._tx.select_docs(
            self._t, self._t.c.attestation_type == "x509", order="registration_id", shape="x509"
        )
        return [self._load(r) for r in rows]


class _Groups:
    _t = t.enrollment_groups

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> EnrollmentGroup:
        return rec.group_from_doc(row.doc, *_stamp(row))

    async def get(self, group_id: str) -> EnrollmentGroup | None:
        row = await self._tx.get(self._t, {"group_id": group_id})
        return self._load(row) if row else None

    async def put(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup:
        gid = group.enrollment_group_id
        doc = rec.group_to_doc(group)
        stamp = await self._tx.put(
            self._t,
            {"group_id": gid},
            f"enrollment group {gid}",
            doc,
            if_match,
            {"attestation_type": group.attestation.type},
        )
        # The group row is written (and locked) first, so concurrent puts of one group
        # rewrite its index rows one after the other.
        for index, column, values in (
            (t.group_signing_thumbprints, "sha256", rec.group_signing_thumbprints(group)),
            (t.group_ca_references, "ca_name", rec.group_ca_references(group)),
        ):
            await self._tx.run(delete(index).where(index.c.group_id == gid))
            if values:
                await self._tx.run(index.insert().values([{"group_id": gid, column: v} for v in sorted(values)]))
        return rec.group_from_doc(doc, *stamp)

    async def delete(self, group_id: str, if_match: str | None = None) -> None:
        # Index rows go with the group (ON DELETE CASCADE).
        await self._tx.delete(self._t, {"group_id": group_id}, f"enrollment group {group_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[EnrollmentGroup]:
        rows, token = await self._tx.page(self._t, "group_id", page_size, continuation)
        return Page([self._load(r) for r in rows], token)

    async def _through(self, index: Table, column: str, value: str) -> Sequence[EnrollmentGroup]:
        return list(
            await self._tx.cached(("through", index.name, value), lambda: self._through_db(index, column, value))
        )

    async def _through_db(self, index: Table, column: str, value: str) -> Sequence[EnrollmentGroup]:
        ids = select(index.c.group_id).where(index.c[column] == bindparam("value"))
        rows = await self._tx.select_docs(
            self._t,
            self._t.c.group_id.in_(ids),
            order="group_id",
            shape=f"{index.name}.{column}",
            bind={"value": value},
        )
        return tuple(self._load(r) for r in rows)

    async def find_by_signing_thumbprint(self, sha256_thumbprint: str) -> Sequence[EnrollmentGroup]:
        return await self._through(t.group_signing_thumbprints, "sha256", sha256_thumbprint.upper())

    async def find_by_ca_reference(self, ca_name: str) -> Sequence[EnrollmentGroup]:
        return await self._through(t.group_ca_references, "ca_name", ca_name)

    async def list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        return list(await self._tx.cached(("symmetricKey groups",), self._list_symmetric_key))

    async def _list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        rows = await self._tx.select_docs(
            self._t, self._t.c.attestation_type == "symmetricKey", order="group_id", shape="symmetricKey"
        )
        return tuple(self._load(r) for r in rows)


class _Cas:
    _t = t.ca_certificates

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> CaCertificate:
        return rec.ca_from_doc(row.doc, *_stamp(row))

    async def get(self, name: str) -> CaCertificate | None:
        row = await self._tx.get(self._t, {"name": name})
        return self._load(row) if row else None

    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None:
        wanted = sha256_thumbprint.upper()
        if not wanted:
            return None
        rows = await self._tx.select_docs(
            self._t,
            self._t.c.sha256_thumbprint == bindparam("thumbprint"),
            order="name",
            shape="thumbprint",
            bind={"thumbprint": wanted},
        )
        return self._load(rows[0]) if rows else None

    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate:
        thumbprint = ca.sha256_thumbprint or None
        if thumbprint:
            other = (
                await self._tx.run(
                    select(self._t.c.name).where(self._t.c.sha256_thumbprint == thumbprint, self._t.c.name != ca.name)
                )
            ).first()
            if other is not None:
                raise AlreadyExists(f"this certificate is already uploaded as CA {other.name!r}")
        doc = rec.ca_to_doc(ca)
        columns = {
            "sha256_thumbprint": thumbprint,
            "is_verified": ca.is_verified,
            "verification_code_hash": doc["verificationCodeHash"],
        }
        try:
            stamp = await self._tx.put(self._t, {"name": ca.name}, f"CA certificate {ca.name}", doc, if_match, columns)
        except StoreError as exc:
            # The unique thumbprint index lost a race against a concurrent upload.
            if isinstance(exc.__cause__, _INTEGRITY_ERRORS):
                raise AlreadyExists("this certificate is already uploaded as another CA") from None
            raise
        return rec.ca_from_doc(doc, *stamp)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        await self._tx.delete(self._t, {"name": name}, f"CA certificate {name}", if_match)

    async def list(self) -> Sequence[CaCertificate]:
        return list(await self._tx.cached(("cas",), self._list))

    async def _list(self) -> Sequence[CaCertificate]:
        return tuple(self._load(r) for r in await self._tx.select_docs(self._t, order="name"))


class _Hubs:
    _t = t.linked_hubs

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    async def get(self, host_name: str) -> LinkedHub | None:
        row = await self._tx.get(self._t, {"host_name": host_name})
        return rec.hub_from_doc(row.doc) if row else None

    async def put(self, hub: LinkedHub) -> LinkedHub:
        doc = rec.hub_to_doc(hub)
        await self._tx.put(self._t, {"host_name": hub.host_name}, f"linked hub {hub.host_name}", doc, None)
        return rec.hub_from_doc(doc)

    async def delete(self, host_name: str) -> None:
        await self._tx.delete(self._t, {"host_name": host_name}, f"linked hub {host_name}", None)

    async def list(self) -> Sequence[LinkedHub]:
        return list(await self._tx.cached(("hubs",), self._list))

    async def _list(self) -> Sequence[LinkedHub]:
        return tuple(rec.hub_from_doc(r.doc) for r in await self._tx.select_docs(self._t, order="host_name"))


class _Settings:
    _t = t.service_settings
    _KEY: ClassVar[Mapping[str, str]] = {"id": "service"}

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    async def get(self) -> ServiceSettings | None:
        return await self._tx.cached(("settings",), self._get)

    async def _get(self) -> ServiceSettings | None:
        row = await self._tx.get(self._t, self._KEY)
        return rec.settings_from_doc(row.doc) if row else None

    async def put(self, settings: ServiceSettings) -> ServiceSettings:
        doc = rec.settings_to_doc(settings)
        await self._tx.put(self._t, self._KEY, "service settings", doc, None)
        return rec.settings_from_doc(doc)


class _Registrations:
    _t = t.registrations

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> RegistrationRecord:
        return rec.registration_from_doc(row.doc, *_stamp(row))

    async def get(self, registration_id: str, *, for_update: bool = False) -> RegistrationRecord | None:
        if for_update and self._tx.pg:
            # FOR UPDATE cannot lock a row that does not exist yet; the advisory lock on the
            # id's hash serialises first registrations too (released at commit or rollback).
            await self._tx.fetch(
                ("registration lock",),
                _registration_lock,
                {"k_key": "registration:" + registration_key(registration_id)},
            )
        row = await self._tx.get(self._t, {"registration_id": registration_key(registration_id)}, lock=for_update)
        return self._load(row) if row else None

    async def put(self, record: RegistrationRecord, if_match: str | None = None) -> RegistrationRecord:
        doc = rec.registration_to_doc(record)
        columns = {
            "enrollment_group_id": record.enrollment_group_id,
            "status": record.status,
            "operation_id": record.operation_id,
        }
        stamp = await self._tx.put(
            self._t,
            {"registration_id": registration_key(record.registration_id)},
            f"registration {record.registration_id}",
            doc,
            if_match,
            columns,
        )
        return rec.registration_from_doc(doc, *stamp)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        await self._tx.delete(
            self._t, {"registration_id": registration_key(registration_id)}, f"registration {registration_id}", if_match
        )

    async def list(
        self, page_size: int = 100, continuation: str | None = None, *, enrollment_group_id: str | None = None
    ) -> Page[RegistrationRecord]:
        filters = [] if enrollment_group_id is None else [self._t.c.enrollment_group_id == enrollment_group_id]
        rows, token = await self._tx.page(self._t, "registration_id", page_size, continuation, *filters)
        return Page([self._load(r) for r in rows], token)


class _Devices:
    _t = t.devices

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> DeviceIdentity:
        return rec.device_from_doc(row.doc, *_stamp(row))

    async def get(self, hub: str, device_id: str, *, for_update: bool = False) -> DeviceIdentity | None:
        row = await self._tx.get(self._t, {"hub": hub, "device_id": device_id}, lock=for_update)
        return self._load(row) if row else None

    async def put(self, device: DeviceIdentity, if_match: str | None = None) -> DeviceIdentity:
        doc = rec.device_to_doc(device)
        stamp = await self._tx.put(
            self._t,
            {"hub": device.hub, "device_id": device.device_id},
            f"device {device.device_id} on {device.hub}",
            doc,
            if_match,
            {"registration_id": device.registration_id},
        )
        return rec.device_from_doc(doc, *stamp)

    async def delete(self, hub: str, device_id: str, if_match: str | None = None) -> None:
        await self._tx.delete(self._t, {"hub": hub, "device_id": device_id}, f"device {device_id} on {hub}", if_match)

    async def list(self, hub: str, page_size: int = 100, continuation: str | None = None) -> Page[DeviceIdentity]:
        rows, token = await self._tx.page(self._t, "device_id", page_size, continuation, self._t.c.hub == hub)
        return Page([self._load(r) for r in rows], token)


class _Refusals:
    _t = t.refusals

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _upsert(pg: bool) -> Any:
        """Count an attempt into its (reason, registration id, peer) entry, or start one."""
        table = t.refusals
        statement = (pg_insert if pg else sqlite_insert)(table)
        latest = ("at", "message", "attestation_type", "enrollment")
        return statement.on_conflict_do_update(
            index_elements=["reason", "registration_id", "peer"],
            set_={
                "attempts": table.c.attempts + statement.excluded.attempts,
                **{name: statement.excluded[name] for name in latest},
            },
        )

    def kept(self) -> Select[Any]:
        """Ids of the entries fair eviction keeps (store._common, "refusal retention"): ranked
        within their (source, reason), newest first; kept by rank, then recency."""
        table = self._t
        rank = (
            func.row_number()
            .over(partition_by=(table.c.source, table.c.reason), order_by=(table.c.at.desc(), table.c.id.desc()))
            .label("rank")
        )
        ranked = select(table.c.id, table.c.at, rank).subquery("ranked")
        return (
            select(ranked.c.id)
            .order_by(ranked.c.rank, ranked.c.at.desc(), ranked.c.id.desc())
            .limit(self._tx.store.refusal_limit)
        )

    async def add(self, refusal: Refusal) -> None:
        reason, registration_id, peer = refusal_key(refusal)
        pg = self._tx.pg
        await self._tx.run_prebuilt(
            ("refusal upsert", pg),
            lambda: self._upsert(pg),
            {
                "registration_id": registration_id,
                "reason": reason,
                "peer": peer,
                "source": refusal_source(peer),
                "at": refusal.at,
                "first_at": refusal.first_at or refusal.at,
                "attempts": refusal.count,
                "message": refusal.message,
                "attestation_type": refusal.attestation_type,
                "enrollment": refusal.enrollment,
            },
        )
        if self._tx.store.count_refusal():
            await self._tx.run(delete(self._t).where(self._t.c.id.not_in(self.kept())))

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        # Pruning runs every few inserts; the same rule applied here makes the bound exact.
        kept = self.kept().subquery("kept")
        query = select(self._t).join(kept, kept.c.id == self._t.c.id)
        if registration_id is not None:
            query = query.where(self._t.c.registration_id == registration_id)
        rows = (await self._tx.run(query.order_by(self._t.c.at.desc(), self._t.c.id.desc()).limit(limit))).all()
        return [
            Refusal(
                registration_id=r.registration_id,
                reason=r.reason,
                message=r.message,
                attestation_type=r.attestation_type,
                at=rec.to_utc(r.at),
                enrollment=r.enrollment,
                peer=r.peer or None,
                count=r.attempts,
                first_at=rec.to_utc(r.first_at),
            )
            for r in rows
        ]


class _Stats:
    """Counts by SQL aggregates: no document is loaded. The per-minute buckets are a string
    prefix on SQLite (which keeps times as ISO text) and date_trunc on PostgreSQL."""

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    async def _count(self, table: Table) -> int:
        return int((await self._tx.run(select(func.count()).select_from(table))).scalar_one())

    async def counts(self) -> ServiceCounts:
        reg = t.registrations
        rows = (await self._tx.run(select(reg.c.status, func.count()).group_by(reg.c.status))).all()
        return ServiceCounts(
            await self._count(t.individual_enrollments),
            await self._count(t.enrollment_groups),
            {str(status): int(n) for status, n in rows},
        )

    def _minute(self, column: Any) -> Any:
        return func.date_trunc("minute", column) if self._tx.pg else func.substr(column, 1, 16)

    def _load_minute(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return rec.to_utc(value).replace(second=0, microsecond=0)
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)

    async def _buckets(self, column: Any, *where: ColumnElement[bool]) -> dict[datetime, int]:
        bucket = self._minute(column).label("minute")
        rows = (await self._tx.run(select(bucket, func.count()).where(*where).group_by(bucket))).all()
        return {self._load_minute(minute): int(n) for minute, n in rows}

    async def per_minute(self, since: datetime) -> tuple[Mapping[datetime, int], Mapping[datetime, int]]:
        reg, ref = t.registrations, t.refusals
        assigned = await self._buckets(reg.c.updated, reg.c.updated >= since, reg.c.status == "assigned")
        # Refusals are entries counted per (reason, registration id, peer): each counts once, in
        # the minute it was last seen, within the same bound as RefusalLog.list (entries past
        # it that pruning has not reached yet are not counted).
        kept = ref.c.id.in_(_Refusals(self._tx).kept())
        refused = await self._buckets(ref.c.at, ref.c.at >= since, kept)
        return assigned, refused

    async def devices(self, hub: str) -> DeviceCounts:
        dev = t.devices
        status = dev.c.doc["status"].as_string()
        rows = (await self._tx.run(select(status, func.count()).where(dev.c.hub == hub).group_by(status))).all()
        counts = {str(s): int(n) for s, n in rows}
        return DeviceCounts(sum(counts.values()), counts.get("enabled", 0))


def _bag(props: object) -> dict[str, str | None]:
    return {str(k): (None if v is None else str(v)) for k, v in dict(props or {}).items()}  # type: ignore[call-overload]


class _Telemetry:
    _t = t.hub_telemetry

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    async def add_many(self, messages: Sequence[TelemetryMessage]) -> None:
        if not messages:
            return
        rows = [
            {
                "hub": m.hub,
                "device_id": m.device_id,
                "module_id": m.module_id,
                "enqueued": m.enqueued,
                "properties": {
                    "system": dict(m.system_properties),
                    "application": dict(m.application_properties),
                },
                "body": m.body,
            }
            for m in messages
        ]
        await self._tx.run_prebuilt_many(("insert", self._t.name), self._t.insert, rows)

    async def list(
        self,
        hub: str,
        device_id: str | None = None,
        *,
        after: int | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> Sequence[TelemetryMessage]:
        check_page_size(limit)
        query = select(self._t).where(self._t.c.hub == hub)
        if device_id is not None:
            query = query.where(self._t.c.device_id == device_id)
        if after is not None:
            query = query.where(self._t.c.seq > after)
        order = self._t.c.seq.desc() if newest else self._t.c.seq
        rows = list((await self._tx.run(query.order_by(order).limit(limit))).all())
        if newest:
            rows.reverse()
        return [
            TelemetryMessage(
                hub=r.hub,
                device_id=r.device_id,
                body=bytes(r.body),
                enqueued=rec.to_utc(r.enqueued),
                system_properties=_bag(r.properties.get("system")),
                application_properties=_bag(r.properties.get("application")),
                module_id=r.module_id,
                seq=int(r.seq),
            )
            for r in rows
        ]


class _C2D:
    _t = t.hub_c2d

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(r: Row[Any]) -> CloudMessage:
        return CloudMessage(
            hub=r.hub,
            device_id=r.device_id,
            message_id=r.message_id,
            body=bytes(r.body),
            enqueued=rec.to_utc(r.enqueued),
            expires=rec.to_utc(r.expires) if r.expires is not None else None,
            system_properties=_bag(r.properties.get("system")),
            application_properties=_bag(r.properties.get("application")),
            seq=int(r.seq),
        )

    async def add(self, message: CloudMessage) -> CloudMessage:
        taken = (await self._tx.run(select(self._t.c.seq).where(self._t.c.message_id == message.message_id))).first()
        if taken is not None:
            raise AlreadyExists(f"cloud-to-device message {message.message_id} is already queued")
        statement = (
            self._t.insert()
            .values(
                hub=message.hub,
                device_id=message.device_id,
                message_id=message.message_id,
                enqueued=message.enqueued,
                expires=message.expires,
                properties={
                    "system": dict(message.system_properties),
                    "application": dict(message.application_properties),
                },
                body=message.body,
            )
            .returning(self._t)
        )
        return self._load((await self._tx.run(statement)).one())

    async def pending(
        self, hub: str, device_id: str, now: datetime, *, after: int | None = None, limit: int = 100
    ) -> Sequence[CloudMessage]:
        check_page_size(limit)
        query = select(self._t).where(
            self._t.c.hub == hub,
            self._t.c.device_id == device_id,
            (self._t.c.expires.is_(None)) | (self._t.c.expires > now),
        )
        if after is not None:
            query = query.where(self._t.c.seq > after)
        rows = (await self._tx.run(query.order_by(self._t.c.seq).limit(limit))).all()
        return [self._load(r) for r in rows]

    async def complete(self, hub: str, device_id: str, seq: int) -> bool:
        result = await self._tx.run(
            delete(self._t).where(self._t.c.seq == seq, self._t.c.hub == hub, self._t.c.device_id == device_id)
        )
        return bool(getattr(result, "rowcount", 0))

    async def count(self, hub: str, device_id: str) -> int:
        query = select(func.count()).select_from(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id)
        return int((await self._tx.run(query)).scalar_one())

    async def expire(self, now: datetime) -> int:
        result = await self._tx.run(delete(self._t).where(self._t.c.expires <= now))
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge(self, hub: str, device_id: str) -> int:
        result = await self._tx.run(delete(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id))
        return int(getattr(result, "rowcount", 0) or 0)


class _HubSessions:
    _t = t.hub_sessions

    def __init__(self, tx: _SqlTx) -> None:
        self._tx = tx

    async def get(self, hub: str, device_id: str) -> HubSession | None:
        row = (
            await self._tx.run(select(self._t.c.doc).where(self._t.c.hub == hub, self._t.c.device_id == device_id))
        ).first()
        if row is None:
            return None
        doc = row.doc
        return HubSession(
            hub,
            device_id,
            tuple((str(f), int(q)) for f, q in doc.get("subscriptions") or ()),
            int(doc.get("desiredVersionSent", 0)),
        )

    async def put(self, session: HubSession) -> None:
        doc = {
            "subscriptions": [[f, q] for f, q in session.subscriptions],
            "desiredVersionSent": session.desired_version_sent,
        }
        values = {"doc": doc, "updated": self._tx.now()}
        inserter = pg_insert if self._tx.pg else sqlite_insert
        await self._tx.run(
            inserter(self._t)
            .values(hub=session.hub, device_id=session.device_id, **values)
            .on_conflict_do_update(index_elements=["hub", "device_id"], set_=values)
        )

    async def delete(self, hub: str, device_id: str) -> None:
        await self._tx.run(delete(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id))


class _UnitOfWork:
    def __init__(self, tx: _SqlTx) -> None:
        # Annotated with the port types: the UnitOfWork protocol's attributes are invariant.
        self.enrollments: EnrollmentRepo = _Enrollments(tx)
        self.groups: GroupRepo = _Groups(tx)
        self.cas: CaRepo = _Cas(tx)
        self.hubs: LinkedHubRepo = _Hubs(tx)
        self.settings: SettingsRepo = _Settings(tx)
        self.registrations: RegistrationRepo = _Registrations(tx)
        self.devices: DeviceRepo = _Devices(tx)
        self.refusals: RefusalLog = _Refusals(tx)
        self.stats: StatisticsRepo = _Stats(tx)
        self.telemetry: TelemetryRepo = _Telemetry(tx)
        self.c2d: C2DRepo = _C2D(tx)
        self.hub_sessions: HubSessionRepo = _HubSessions(tx)
        self._tx = tx

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        # Kept in the read cache, which every write of its tables drops (SqlStore._cache_for).
        return await self._tx.cached(("derived", *key), compute)


class SqlStore:
    """`Store` over an AsyncEngine whose schema is already at the newest revision.

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
        self._refusals_added = 0
        self._serial = asyncio.Lock() if self.dialect == "sqlite" else None
        self._closed = False
        # The read cache: answers of _SqlTx.cached (settings, hubs, CAs, group lookups), filled
        # under one "version" of the configuration tables and trusted only by transactions that
        # see that same version (see _cache_for).
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._cache_version: int | None = None
        self._sqlite: Connection | None = None
        self._checkpointer: WalCheckpointer | None = None

    def error(self, exc: BaseException) -> StoreError:
        return describe_error(exc, self.engine.url)

    def count_refusal(self) -> bool:
        """Count one refusal insert; True when it is time to prune."""
        self._refusals_added += 1
        return self._refusals_added % self.prune_every == 0

    # begin() and read() hand out _unit's context manager itself rather than wrapping it in
    # another generator: a registration opens two units, and each generator layer costs.

    def begin(self) -> AbstractAsyncContextManager[_UnitOfWork]:
        return self._unit(self._transaction)

    def read(self) -> AbstractAsyncContextManager[_UnitOfWork]:
        """A unit of work that only reads (a write raises StoreError). On PostgreSQL its
        statements run without BEGIN and COMMIT, two round trips fewer: under READ COMMITTED,
        which is what a transaction would have had, every statement sees the latest commits
        either way. On SQLite it takes a read snapshot (deferred BEGIN), not the write lock,
        so it never waits for another process's writer."""
        return self._unit(self._reading)

    @asynccontextmanager
    async def _unit(self, opened: Callable[[], AbstractAsyncContextManager[_SqlTx]]) -> AsyncIterator[_UnitOfWork]:
        if self._closed:
            raise StoreError("the store is closed")
        serial: AbstractAsyncContextManager[Any] = self._serial if self._serial is not None else nullcontext()
        body_error: BaseException | None = None
        async with serial:
            try:
                async with opened() as tx:
                    try:
                        yield _UnitOfWork(tx)
                    except BaseException as exc:
                        body_error = exc
                        raise
                    finally:
                        tx.open = False
            except _DB_ERRORS as exc:
                # An OSError from the caller's own block is theirs, not the database's.
                if exc is body_error:
                    raise
                raise self.error(exc) from None

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[_SqlTx]:
        if isinstance(self.engine, AsyncEngine):
            # No begin(): the prebuilt statements go to asyncpg directly, in autocommit. A
            # statement SQLAlchemy runs itself would begin a transaction, rolled back on return.
            async with self.engine.connect() as pg_conn:
                tx = _SqlTx(self, pg_conn, read_only=True)
                tx.version_unread = True
                yield tx
            return
        conn = self._sqlite_connection(self.engine)
        raw: Any = conn.connection.driver_connection  # sqlite3.Connection
        raw.execute("BEGIN")  # deferred: the first read takes a snapshot; no lock to wait for
        tx = _SqlTx(self, conn, read_only=True)
        try:
            # Read before any row: the rows read are never older than the version (the cache
            # may hold newer rows under it, which the next version's cache replaces).
            tx.cache = self._cache_for(raw.execute("PRAGMA data_version").fetchone()[0])
            yield tx
        finally:
            if raw.in_transaction:
                raw.execute("COMMIT")  # ends the snapshot; nothing was written
            if tx.through_sqlalchemy:
                conn.rollback()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_SqlTx]:
        """Commit when the block ends normally, roll back when it raises."""
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as pg_conn:
                tx = _SqlTx(self, pg_conn)
                try:
                    if await tx.start_pg_transaction():
                        tx.version_unread = True
                    else:
                        # This first execution, through SQLAlchemy, starts the transaction.
                        found = await tx.fetch(("config version",), lambda: _VERSION_QUERY, {})
                        tx._version_read(found[0][0] if found else None)
                    yield tx
                finally:
                    if tx.dirty:
                        self._drop_cache()
            return
        # SQLite: the store's one connection, with BEGIN IMMEDIATE / COMMIT / ROLLBACK sent by us;
        # SQLAlchemy's transaction bookkeeping cost more per registration than SQLite's commit.
        conn = self._sqlite_connection(self.engine)
        raw: Any = conn.connection.driver_connection  # sqlite3.Connection
        await _retry_busy(lambda: raw.execute("BEGIN IMMEDIATE"))
        tx = _SqlTx(self, conn)
        try:
            # Read under the write lock: nobody else commits until we do.
            tx.cache = self._cache_for(raw.execute("PRAGMA data_version").fetchone()[0])
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
                self._drop_cache()

    def _cache_for(self, version: int) -> dict[tuple[Any, ...], Any] | None:
        """The cache a transaction that sees `version` may use, or None to read through.

        SQLite: `version` is PRAGMA data_version, read under the write lock; it moves when
        another connection (another process) commits, and our own writes drop the cache.
        PostgreSQL: `version` is config_version, which every writer of a cached table bumps,
        on any node; transactions run concurrently here, so one that sees an older version
        than the cache's reads through, and a newer version starts a new cache. A transaction
        that reads the version before another commits and the rows after may cache the newer
        rows under the older version: stale only in the safe direction, and dropped as soon as
        a transaction sees the new version.
        """
        if version == self._cache_version:
            return self._cache
        if self.dialect == "postgresql" and self._cache_version is not None and version < self._cache_version:
            return None
        self._cache = {}
        self._cache_version = version
        return self._cache

    def _drop_cache(self) -> None:
        self._cache = {}
        self._cache_version = None

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
        raw: Any = self._sqlite_connection(self.engine).connection.driver_connection
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
