"""The fast SQLite bind converters give sqlite3 exactly what SQLAlchemy's converters give.

Each column type with a fast converter is checked value for value against SQLAlchemy's own
converter for that column (through the store's real engine, so with its JSON serializer), on
the inputs the fast path takes and on those it hands back; then a row written through the
fast path is read back through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, select

from iotdps.hub.records import TelemetryMessage
from iotdps.store import SqlStore, open_store
from iotdps.store import tables as t
from iotdps.store._common import DocText
from iotdps.store._sqlite_binds import sqlite_bind_converter

UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))

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
