"""The one place that reaches under SQLAlchemy, for speed.

Profiles of the registration path (bench/PROFILE.md) found SQLAlchemy's per-execution work
costing more than the database's: compiling an INSERT ... ON CONFLICT anew on every call,
its parameter and result processing, and on PostgreSQL a whole execution just to send the
BEGIN it defers. So the store builds each statement once, compiles it once per dialect, and
hands the SQL text and converted arguments to the driver (sqlite3 or asyncpg) directly,
inside the transaction SQLAlchemy's connection holds.

What this relies on, beyond SQLAlchemy's documented API (tests/unit/store/sql/test_fastpath.py
checks each, so that an upgrade that changes one fails there, loudly, not in production):
- a compiled statement's `string`, `positiontup` (the bind names in positional order) and
  `binds` (name -> BindParameter), for the two dialects' positional paramstyles;
- the dialect's `_json_serializer` (the engine's `json_serializer`), for the JSON converter;
- asyncpg's adapted connection `_start_transaction()` coroutine and `_started` flag: the
  adapter begins lazily, on the first statement SQLAlchemy executes, and this sends it now;
- SQLite: a connection whose driver is in autocommit (isolation_level None, engine.py) lets
  the store send BEGIN/COMMIT itself; SQLAlchemy's autobegin then sends nothing, and its
  rollback() afterwards is a no-op at the driver that resets its bookkeeping.
Without the private hook (another SQLAlchemy) the store still works, the slower way: the
first statement of a write transaction goes through SQLAlchemy, which begins it.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, Connection, Dialect, LargeBinary
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from iotdps.store._common import DocText
from iotdps.store.tables import UtcDateTime

__all__ = [
    "Converter",
    "RawStatement",
    "asyncpg_connection",
    "compiled",
    "pg_many",
    "pg_rows",
    "prebuilt",
    "sqlite_bind_converter",
    "sqlite_driver",
    "sqlite_many",
    "sqlite_rows",
    "start_pg_transaction",
]

Converter = Callable[[Any], Any]

# Statements by shape, built on first use (a few dozen shapes in all), and their compiled
# forms by (dialect, shape, bind names). SQLAlchemy memoises a statement object's cache key,
# so executing the same object again also skips rebuilding and re-hashing its expression tree.
_PREBUILT: dict[tuple[Any, ...], Any] = {}


def prebuilt(shape: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement for `shape`, built on first use."""
    statement = _PREBUILT.get(shape)
    if statement is None:
        statement = _PREBUILT[shape] = build()
    return statement


@dataclass(frozen=True, slots=True)
class RawStatement:
    """A prebuilt statement compiled once for its driver (sqlite3 or asyncpg): SQL text, bind
    order and SQLAlchemy's own type converters."""

    sql: str
    binds: tuple[tuple[str, Converter | None], ...]
    row: Callable[..., Any] | None  # a named tuple type for the selected columns
    results: tuple[Converter | None, ...]

    def arguments(self, bind: Mapping[str, Any]) -> list[Any]:
        return [bind[name] if convert is None else convert(bind[name]) for name, convert in self.binds]

    def load(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        assert self.row is not None
        results = self.results
        return [self.row(*(v if f is None else f(v) for f, v in zip(results, r, strict=True))) for r in rows]


def compiled(statement: Any, shape: tuple[Any, ...], names: list[str], dialect: Dialect) -> RawStatement | None:
    """`statement` (the one `prebuilt` gave for `shape`) compiled for `dialect` with the bind
    parameters `names`, once; None when SQLAlchemy must run it itself."""
    key = (dialect.name, *shape, *names)
    raw: RawStatement | Literal[False] | None = _PREBUILT.get(key)
    if raw is None:
        raw = _PREBUILT[key] = _compile(statement, names, dialect) or False  # False: SQLAlchemy runs it
    return raw or None


def _compile(statement: Any, names: Sequence[str], dialect: Dialect) -> RawStatement | None:
    """`statement` as the driver runs it with the bind parameters `names`; None when SQLAlchemy
    must run it itself (a column default to fill in, for one). Names starting `k_` are bind
    parameters of the statement itself (keys), the others values of its columns."""
    done = statement.compile(dialect=dialect, column_keys=[n for n in names if not n.startswith("k_")])
    order = list(done.positiontup or ())
    if not set(order) <= set(names):
        return None
    if dialect.name == "sqlite":
        binds = tuple((n, sqlite_bind_converter(done.binds[n].type, dialect)) for n in order)
    else:
        binds = tuple((n, done.binds[n].type.dialect_impl(dialect).bind_processor(dialect)) for n in order)
    columns = list(statement.exported_columns)  # what a SELECT selects or a DML statement returns
    row = namedtuple("_Row", [c.key for c in columns]) if columns else None
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return RawStatement(done.string, binds, row, results)


# --------------------------------------------------------------------------- SQLite binds
#
# A telemetry batch converts every column of every row before sqlite3 sees it, and SQLAlchemy's
# converters for our three costly column types were a third of the hub's CPU per message: the
# UTC timestamp went through our TypeDecorator and then a `%`-format with a dict of its fields,
# the JSON column through a wrapper, and bytes into a memoryview. These give sqlite3 the very
# same values (the tests compare them value for value with SQLAlchemy's) for the common
# inputs, and hand anything else to SQLAlchemy's converter.


def _utc_text(fallback: Converter) -> Converter:
    # SQLAlchemy stores SQLite DATETIME as "YYYY-MM-DD HH:MM:SS.ffffff" of the naive UTC time,
    # which is exactly isoformat(" ", "microseconds").
    def convert(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is UTC:
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return fallback(value)

    return convert


def _json_text(fallback: Converter, serializer: Converter) -> Converter:
    # SQLAlchemy's JSON converter is the engine's serializer plus handling of None and
    # JSON.NULL; documents (dicts, lists, already encoded text) need only the serializer.
    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is dict or kind is list or kind is DocText:
            return serializer(value)
        return fallback(value)

    return convert


def _blob(fallback: Converter) -> Converter:
    # sqlite3 stores bytes as a BLOB as it is; SQLAlchemy wraps them in a memoryview first.
    def convert(value: Any) -> Any:
        return value if type(value) is bytes else fallback(value)

    return convert


def sqlite_bind_converter(column_type: TypeEngine[Any], dialect: Dialect) -> Converter | None:
    """The converter from a Python value to what sqlite3 binds, for a column of this type."""
    processor = column_type.dialect_impl(dialect).bind_processor(dialect)
    if processor is None:
        return None
    if isinstance(column_type, UtcDateTime):
        return _utc_text(processor)
    if isinstance(column_type, JSON):
        serializer = getattr(dialect, "_json_serializer", None)
        return _json_text(processor, serializer) if serializer is not None else processor
    if isinstance(column_type, LargeBinary):
        return _blob(processor)
    return processor


# --------------------------------------------------------------------------- the drivers


def sqlite_driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under SQLAlchemy's."""
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return driver


def sqlite_rows(conn: Connection, raw: RawStatement, bind: Mapping[str, Any]) -> list[Any]:
    return sqlite_driver(conn).execute(raw.sql, raw.arguments(bind)).fetchall()


def sqlite_many(conn: Connection, raw: RawStatement, rows: Sequence[Mapping[str, Any]]) -> None:
    sqlite_driver(conn).executemany(raw.sql, [raw.arguments(row) for row in rows])


async def _adapted(conn: AsyncConnection) -> Any:
    # Each get_raw_connection() is a greenlet switch through SQLAlchemy's async layer: callers
    # ask once per unit of work and keep what they got.
    return await conn.get_raw_connection()


async def asyncpg_connection(conn: AsyncConnection) -> Any:
    """The asyncpg.Connection under SQLAlchemy's, in whatever transaction that one holds."""
    return (await _adapted(conn)).driver_connection


async def start_pg_transaction(conn: AsyncConnection) -> tuple[bool, Any]:
    """Send the BEGIN of `conn`'s transaction now, so that the statements after it may all go
    to asyncpg directly; (False, ...) when it could not, and the caller must run its first
    statement through SQLAlchemy, which begins on first use. Also the asyncpg.Connection.

    SQLAlchemy's asyncpg adapter begins lazily, on the first statement it executes itself.
    Its `_start_transaction` coroutine is what it awaits then; calling it here saves a whole
    SQLAlchemy execution per write transaction (bench/PROFILE.md)."""
    adapted = await _adapted(conn)
    start = getattr(adapted, "_start_transaction", None)
    if start is None or not isinstance(getattr(adapted, "_started", None), bool):
        return False, adapted.driver_connection
    if not adapted._started:
        await start()
    return bool(adapted._started), adapted.driver_connection


async def pg_rows(driver: Any, raw: RawStatement, bind: Mapping[str, Any]) -> list[Any]:
    rows: list[Any] = await driver.fetch(raw.sql, *raw.arguments(bind))
    return rows


async def pg_many(driver: Any, raw: RawStatement, rows: Sequence[Mapping[str, Any]]) -> None:
    await driver.executemany(raw.sql, [raw.arguments(row) for row in rows])
