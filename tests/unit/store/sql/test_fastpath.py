"""store/sql/fastpath.py: the fast SQLite bind converters, and the canary for what fastpath
relies on beneath SQLAlchemy's documented API.

The fast SQLite bind converters give sqlite3 exactly what SQLAlchemy's converters give: each
column type with a fast converter is checked value for value against SQLAlchemy's own converter
for that column (through the store's real engine, so with its JSON serializer), on the inputs
the fast path takes and on those it hands back; then a row written through the fast path is
read back through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import inspect
import socket
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import JSON, LargeBinary, String, bindparam, cast, literal, select
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.dialects.sqlite import pysqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from iotdps.hub.records import TelemetryMessage
from iotdps.store import SqlStore, open_store
from iotdps.store import tables as t
from iotdps.store._common import DocText, json_column_text
from iotdps.store.sql import fastpath
from iotdps.store.sql.engine import RAW_TRANSACTIONS
from iotdps.store.sql.fastpath import sqlite_bind_converter
from iotdps.store.sql.tx import VERSION_QUERY
from iotdps.store.tables import UtcDateTime

UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
PG_DSN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

SAMPLES: dict[str, list[Any]] = {
    "enqueued": [
        dt.datetime(2026, 11, 22, 12, 30, 1, 123456, tzinfo=UTC),
        dt.datetime(2026, 11, 22, 12, 30, 1, tzinfo=UTC),  # no microseconds: still ".000000"
        dt.datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year below 1000 keeps four digits
        dt.datetime(2026, 11, 22, 14, 30, 1, 5, tzinfo=PLUS_TWO),  # another zone: the fallback
        None,
    ],
    "properties": [
        {"system": {"content-type": "application/json"}, "application": {"k": "é"}},
        [1, "two", None],
        DocText('{"already": "encoded"}'),
        None,  # JSON null: the fallback
        JSON.NULL,
        "a bare string",
        7,
    ],
    "body": [b"\x00\x01binary", b"", bytearray(b"mutable"), None],
}


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    opened = await open_store(f"sqlite:///{tmp_path / 'binds.db'}")
    assert isinstance(opened, SqlStore)
    yield opened
    await opened.close()


def _pg_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _normal(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


async def test_fast_converters_match_sqlalchemy_value_for_value(store: SqlStore) -> None:
    dialect = store.engine.dialect
    for name, values in SAMPLES.items():
        column_type = t.hub_telemetry.c[name].type
        ours = sqlite_bind_converter(column_type, dialect)
        theirs = column_type.dialect_impl(dialect).bind_processor(dialect)
        assert ours is not None and theirs is not None
        for value in values:
            assert _normal(ours(value)) == _normal(theirs(value)), (name, value)


async def test_a_row_written_through_the_fast_path_reads_back(store: SqlStore) -> None:
    when = dt.datetime(2026, 11, 22, 12, 30, 1, 654321, tzinfo=UTC)
    message = TelemetryMessage(
        hub="hub-1.example",
        device_id="dev-1",
        module_id=None,
        enqueued=when,
        system_properties={"content-type": "application/json"},
        application_properties={"temp": "21"},
        body=b'{"t": 21}',
    )
    async with store.begin() as uow:
        await uow.telemetry.add_many([message])
    with store.engine.connect() as conn:  # SQLAlchemy's own read, its own converters
        row = conn.execute(select(t.hub_telemetry)).one()
    assert row.enqueued == when
    assert row.properties == {"system": {"content-type": "application/json"}, "application": {"temp": "21"}}
    assert row.body == b'{"t": 21}'
    async with store.read() as uow:
        (stored,) = await uow.telemetry.list("hub-1.example")
    assert stored.enqueued == when and stored.body == message.body


# --------------------------------------------------------------------------- the canary
#
# store/sql/fastpath.py relies on a few things beyond SQLAlchemy's documented API (its
# docstring lists them). Each test below checks one, by name, so that a SQLAlchemy upgrade
# that changes it fails here with the reason, not as a slow or subtly wrong store.

KEYED_ROW = select(t.devices.c.doc, t.devices.c.etag).where(
    t.devices.c.hub == bindparam("k_hub"), t.devices.c.device_id == bindparam("k_device_id")
)


@pytest.mark.parametrize(
    ("dialect", "placeholder"), [(sqlite_dialect.dialect(), "?"), (asyncpg_dialect.dialect(), "$2")]
)
def test_canary_compiled_statements_expose_sql_bind_order_and_bind_types(dialect: Any, placeholder: str) -> None:
    done = KEYED_ROW.compile(dialect=dialect, column_keys=[])
    assert isinstance(done.string, str) and placeholder in done.string, "compiled.string changed"
    assert list(done.positiontup or ()) == ["k_hub", "k_device_id"], "compiled.positiontup changed"
    assert set(done.binds) >= {"k_hub", "k_device_id"}, "compiled.binds changed"
    assert isinstance(done.binds["k_hub"].type, String), "a bind's type is no longer on compiled.binds"
    # An INSERT compiled with column_keys binds exactly those columns, in a fixed order.
    names = ["hub", "device_id", "doc", "etag", "created", "updated", "registration_id"]
    insert = t.devices.insert().compile(dialect=dialect, column_keys=names)
    assert sorted(insert.positiontup or ()) == sorted(names)


@pytest.mark.parametrize("dialect", [sqlite_dialect.dialect(), asyncpg_dialect.dialect()])
def test_canary_compiled_forms_are_what_the_driver_runs(dialect: Any) -> None:
    raw = fastpath.compiled(KEYED_ROW, ("canary keyed row",), ["k_hub", "k_device_id"], dialect)
    assert raw is not None, "fastpath can no longer compile a keyed read: every read goes the slow way"
    assert raw.arguments({"k_device_id": "d", "k_hub": "h"}) == ["h", "d"]
    (row,) = raw.load([('{"a": 1}', "etag-1")])
    assert row.etag == "etag-1"
    # A statement whose compiled form binds a name the caller did not give (here a literal, as
    # in the store's VERSION_QUERY, which must start a transaction through SQLAlchemy) is left
    # to SQLAlchemy.
    assert fastpath.compiled(VERSION_QUERY, ("canary literal",), [], dialect) is None


async def test_canary_the_dialect_keeps_the_engines_json_serializer(store: SqlStore) -> None:
    assert getattr(store.engine.dialect, "_json_serializer", None) is json_column_text, (
        "dialect._json_serializer is gone: the fast JSON converter would fall back to SQLAlchemy's"
    )
    converter = sqlite_bind_converter(t.hub_telemetry.c.properties.type, store.engine.dialect)
    assert converter is not None and converter(DocText('{"x":1}')) == '{"x":1}'


async def test_canary_sqlite_transactions_the_store_begins_itself(store: SqlStore) -> None:
    """The store sends BEGIN IMMEDIATE and COMMIT on the driver; SQLAlchemy's autobegin on the
    same connection must send nothing, and its rollback() afterwards must be harmless."""
    conn = store.engine.connect().execution_options(**{RAW_TRANSACTIONS: True})
    try:
        driver = fastpath.sqlite_driver(conn)
        assert isinstance(driver, sqlite3.Connection), "Connection.connection.driver_connection changed"
        assert driver.isolation_level is None  # autocommit at the driver (engine.py's connect hook)
        driver.execute("BEGIN IMMEDIATE")
        # SQLAlchemy autobegins here; a BEGIN of its own would fail inside ours.
        assert conn.execute(select(t.config_version.c.version)).scalar_one() >= 0
        driver.execute("COMMIT")
        conn.rollback()
        assert not driver.in_transaction and not conn.in_transaction()
    finally:
        conn.close()
    # Any other connection of the engine takes the write lock at BEGIN (the "begin" hook).
    other = store.engine.connect()
    try:
        other.begin()
        assert fastpath.sqlite_driver(other).in_transaction
    finally:
        other.close()


async def _pg_engine() -> AsyncEngine:
    if not _pg_listening():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
    return create_async_engine(PG_DSN, pool_size=1, max_overflow=0)


@pytest.mark.postgres
async def test_canary_asyncpg_adapter_private_transaction_hook() -> None:
    """fastpath.start_pg_transaction calls the adapter's `_start_transaction` and reads its
    `_started`; SQLAlchemy's commit or rollback must then end the transaction it began."""
    engine = await _pg_engine()
    try:
        async with engine.connect() as conn:
            adapted = await conn.get_raw_connection()
            assert inspect.iscoroutinefunction(getattr(adapted, "_start_transaction", None)), (
                "the asyncpg adapter's _start_transaction is gone: write transactions take the slow way"
            )
            assert adapted._started is False, "the asyncpg adapter's _started flag changed"
            trans = await conn.begin()
            started, driver = await fastpath.start_pg_transaction(conn)
            assert started and isinstance(driver, asyncpg.Connection) and driver.is_in_transaction()
            await driver.execute("SET LOCAL application_name = 'iotdps-canary'")
            # SQLAlchemy's first statement of its own must not try to begin again.
            assert (await conn.execute(select(literal(1)))).scalar_one() == 1
            await trans.rollback()
            assert not driver.is_in_transaction(), "SQLAlchemy's rollback no longer ends the hooked transaction"
            assert await driver.fetchval("SHOW application_name") != "iotdps-canary"
            assert (await fastpath.asyncpg_connection(conn)) is driver
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_canary_asyncpg_raw_statements_match_sqlalchemy() -> None:
    """A statement compiled for asyncpg, run on the driver, gives what SQLAlchemy gives."""
    engine = await _pg_engine()
    when = dt.datetime(2026, 11, 22, 12, 30, 1, 654321, tzinfo=UTC)
    query = select(
        bindparam("k_at", type_=UtcDateTime()).label("at"),
        cast(bindparam("k_doc", type_=JSON()), JSON).label("doc"),
        bindparam("k_body", type_=LargeBinary()).label("body"),
    )
    bind = {"k_at": when, "k_doc": {"a": [1, "é"]}, "k_body": b"\x00raw"}
    try:
        async with engine.connect() as conn:
            theirs = (await conn.execute(query, bind)).one()
            raw = fastpath.compiled(query, ("canary pg",), list(bind), engine.dialect)
            assert raw is not None
            (ours,) = raw.load(await fastpath.pg_rows(await fastpath.asyncpg_connection(conn), raw, bind))
            assert tuple(ours) == tuple(theirs) == (when, {"a": [1, "é"]}, b"\x00raw")
    finally:
        await engine.dispose()
