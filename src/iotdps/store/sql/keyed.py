"""The operations every keyed table shares (a document with etag, created and updated stamps
under a key of one or two columns): get, put with the etag precondition, delete, key-ordered
pages, filtered lists.

Their statements are built once per shape, with bind parameters for the key (k_<name>):
SQLAlchemy memoises a statement object's cache key, so executing it again skips rebuilding and
re-hashing the expression tree, which was most of a keyed read's cost (bench/PROFILE.md).

PostgreSQL: a put locks the row it reads (SELECT ... FOR UPDATE) before checking the etag; a
first insert is an INSERT ... ON CONFLICT DO UPDATE that keeps `created`, so two concurrent
first writes of one key both succeed and leave one consistent row. SQLite: every write
transaction holds the write lock from its BEGIN, so a row read is still true when written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, bindparam, delete, func, literal_column, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from iotdps.ids import new_etag
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store._common import check_delete, check_page_size, check_put, decode_token, dump_doc, encode_token
from iotdps.store.sql.tx import SqlTx

__all__ = ["delete_row", "get", "lock_key", "page", "put", "select_docs", "stamp"]


def stamp(row: Row[Any]) -> tuple[str, datetime, datetime]:
    """A keyed row's (etag, created, updated), times in UTC."""
    return row.etag, rec.to_utc(row.created), rec.to_utc(row.updated)


def _key_lock() -> Select[Any]:
    """PostgreSQL's transaction-scoped advisory lock on a string's hash, prebuilt (the constant
    is a literal so that the one bind parameter is the key): built per call, it went through
    SQLAlchemy's statement compilation and execution on every registration."""
    return select(
        func.pg_advisory_xact_lock(func.hashtextextended(bindparam("k_key"), literal_column("0"))).label("locked")
    )


async def lock_key(tx: SqlTx, shape: str, key: str) -> None:
    """PostgreSQL: serialise the transactions that lock `key` until they end (commit or
    rollback), a key whose row may not exist yet too (FOR UPDATE cannot lock a missing row).
    Prefix `key` with what it names. SQLite's write transactions are serialised already."""
    if tx.pg:
        await tx.fetch((shape,), _key_lock, {"k_key": key})


def _bind(key: Mapping[str, Any]) -> dict[str, Any]:
    return {f"k_{name}": value for name, value in key.items()}


def _key_where(table: Table, key: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    return [table.c[name] == bindparam(f"k_{name}") for name in key]


def _locked(query: Select[Any], lock: bool) -> Select[Any]:
    return query.with_for_update() if lock else query


def _keyed_row(table: Table, key: Mapping[str, Any], lock: bool) -> Select[Any]:
    """A keyed table's row by its key (bind parameters k_<name>), locked for update when `lock`."""
    return _locked(
        select(table.c.doc, table.c.etag, table.c.created, table.c.updated).where(*_key_where(table, key)), lock
    )


async def get(tx: SqlTx, table: Table, key: Mapping[str, str], *, lock: bool = False) -> Row[Any] | None:
    """The row under `key`; `lock`: FOR UPDATE on PostgreSQL (SQLite's unit holds the lock)."""
    if not tx.read_only:
        return await _get(tx, table, key, lock=lock and tx.pg)
    # A read-only unit answers a key it has read again from what it read: one view of the
    # row for the whole unit, and the caller may read a key early (ProvisioningService.
    # authenticate does, so that PostgreSQL's config version comes with it) at no cost.
    memo = (table.name, *key.values())
    if memo not in tx.seen:
        tx.seen[memo] = await _get(tx, table, key, lock=False)
    return tx.seen[memo]


async def _get(tx: SqlTx, table: Table, key: Mapping[str, str], *, lock: bool) -> Row[Any] | None:
    # Once the unit has written a cached table it reads through (cached): no version needed,
    # and none of its own uncommitted bump should reach the store's cache.
    found = await _fetch_with_version(tx, table, key, lock) if tx.version_unread and not tx.dirty else None
    if found is None:
        found = await tx.fetch(("get", table.name, tuple(key), lock), lambda: _keyed_row(table, key, lock), _bind(key))
    row = found[0] if found else None
    if lock or not tx.pg:
        # Locked (PostgreSQL) or read under the write lock (SQLite): still true when this
        # transaction writes the key, so put need not read it again.
        tx.known[(table.name, *key.values())] = (row.etag, row.created) if row is not None else None
    return row


async def _fetch_with_version(tx: SqlTx, table: Table, key: Mapping[str, str], lock: bool) -> list[Any] | None:
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

    rows = await tx.fetch(("get+version", table.name, tuple(key), lock), build, {**_bind(key), "k_version_row": 1})
    tx.version_read(rows[0].version if rows else None)
    if not rows:
        return None
    return [rows[0]] if rows[0].etag is not None else []  # etag is NOT NULL in every keyed table


async def put(
    tx: SqlTx,
    table: Table,
    key: Mapping[str, str],
    what: str,
    doc: dict[str, Any],
    if_match: str | None,
    columns: Mapping[str, Any] | None = None,
) -> tuple[str, datetime, datetime]:
    """Write `doc` (and projection `columns`) under `key`; returns (etag, created, updated)."""
    text = dump_doc(doc, what)  # fails on non-JSON values here, as the memory store does
    await tx.wrote(table)
    bind = _bind(key)
    memo = (table.name, *key.values())
    if memo in tx.known:
        current = tx.known[memo]
    else:
        found = await tx.fetch(
            ("current", table.name, tuple(key), tx.pg),
            lambda: _locked(select(table.c.etag, table.c.created).where(*_key_where(table, key)), tx.pg),
            bind,
        )
        current = (found[0].etag, found[0].created) if found else None
    check_put(what, current[0] if current else None, current is not None, if_match)
    now = tx.now()
    etag = new_etag()
    values = {"doc": text, "etag": etag, "updated": now, **(columns or {})}
    if current is not None:
        await tx.run_prebuilt(
            ("update", table.name, tuple(key), tuple(values)),
            lambda: update(table).where(*_key_where(table, key)),
            {**bind, **values},
        )
        created = rec.to_utc(current[1])
        tx.known[memo] = (etag, created)
        return etag, created, now
    if not tx.pg:
        # SQLite: every transaction began IMMEDIATE, so this one has held the write lock
        # since before it read the key and nobody can have inserted it since: a plain
        # INSERT will do, no ON CONFLICT.
        await tx.run_prebuilt(("insert", table.name), table.insert, {**key, "created": now, **values})
        tx.known[memo] = (etag, now)
        return etag, now, now

    # No row seen: insert, and if a concurrent transaction inserted the key meanwhile,
    # update its row instead, keeping its `created` (RETURNING says which).
    def upsert() -> Any:
        statement = pg_insert(table)
        return statement.on_conflict_do_update(
            index_elements=list(key), set_={name: statement.excluded[name] for name in values}
        ).returning(table.c.created)

    shape = ("upsert", table.name, tuple(key), tuple(values))
    found = await tx.fetch(shape, upsert, {**key, "created": now, **values})
    tx.known[memo] = (etag, found[0].created)  # the row is ours (locked) from here on
    return etag, found[0].created, now


async def delete_row(tx: SqlTx, table: Table, key: Mapping[str, str], what: str, if_match: str | None) -> None:
    """Delete the row under `key` (NotFound when there is none), checking `if_match`."""
    await tx.wrote(table)
    bind = _bind(key)
    found = await tx.fetch(
        ("etag", table.name, tuple(key), tx.pg),
        lambda: _locked(select(table.c.etag).where(*_key_where(table, key)), tx.pg),
        bind,
    )
    current = found[0] if found else None
    check_delete(what, current.etag if current else None, current is not None, if_match)
    await tx.run_prebuilt(
        ("delete", table.name, tuple(key)), lambda: delete(table).where(*_key_where(table, key)), bind
    )
    tx.known[(table.name, *key.values())] = None


async def page(
    tx: SqlTx,
    table: Table,
    key_column: str,
    page_size: int,
    continuation: str | None,
    *filters: ColumnElement[bool],
) -> tuple[list[Row[Any]], str | None]:
    """One page of rows in key order after the continuation, and the next page's token."""
    check_page_size(page_size)
    after = decode_token(continuation)
    column = table.c[key_column]
    query = select(column, table.c.doc, table.c.etag, table.c.created, table.c.updated).where(*filters)
    if after is not None:
        query = query.where(column > after)
    rows = list((await tx.run(query.order_by(column).limit(page_size + 1))).all())
    token = encode_token(rows[page_size - 1][0]) if len(rows) > page_size else None
    return rows[:page_size], token


async def select_docs(
    tx: SqlTx,
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

    return await tx.fetch(("docs", table.name, order, shape), build, bind or {})
