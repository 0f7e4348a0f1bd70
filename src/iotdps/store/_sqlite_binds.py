"""Bind converters for the prebuilt statements on SQLite, cheaper than SQLAlchemy's own.

A telemetry batch converts every column of every row before sqlite3 sees it, and SQLAlchemy's
converters for our three costly column types were a third of the hub's CPU per message: the
UTC timestamp went through our TypeDecorator and then a `%`-format with a dict of its fields,
the JSON column through a wrapper, and bytes into a memoryview. The converters here give
sqlite3 the very same values (the tests compare them value for value with SQLAlchemy's) for
the common inputs, and hand anything else to SQLAlchemy's converter.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from iotdps.store._common import DocText
from iotdps.store.tables import UtcDateTime

__all__ = ["sqlite_bind_converter"]

Converter = Callable[[Any], Any]


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
