"""Migration 0004: registration ids re-keyed in lower case, on SQLite and PostgreSQL.

A database is built at revision 0003 with rows written the old way (keyed by their spelling),
then opened by the current store, which migrates it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.enrollment.models import IndividualEnrollment
from iotdps.errors import StoreError
from iotdps.provisioning.records import RegistrationRecord
from iotdps.store import _records as rec
from iotdps.store import open_store
from iotdps.store import tables as t
from iotdps.store.migrate import _config

from .conftest import PG_DSN
from .test_store_contract import registration, sym_enrollment

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(
    enrollments: list[IndividualEnrollment], records: list[tuple[RegistrationRecord, int]]
) -> Callable[[Connection], None]:
    def write(conn: Connection) -> None:
        command.upgrade(_config(conn), "0003")
        for e in enrollments:
            conn.execute(
                t.individual_enrollments.insert().values(
                    registration_id=e.registration_id,
                    attestation_type=e.attestation.type,
                    doc=rec.enrollment_to_doc(e),
                    etag="e-" + e.registration_id,
                    created=T0,
                    updated=T0,
                )
            )
        for r, minutes in records:
            conn.execute(
                t.registrations.insert().values(
                    registration_id=r.registration_id,
                    enrollment_group_id=r.enrollment_group_id,
                    status=r.status,
                    operation_id=r.operation_id,
                    doc=rec.registration_to_doc(r),
                    etag="r-" + r.registration_id,
                    created=T0,
                    updated=T0 + timedelta(minutes=minutes),
                )
            )

    return write


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("pg_schema")  # PostgreSQL is up (outside any event loop)
    return str(request.param)


@pytest.fixture
async def at_0003(engine_kind: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """A function that builds a revision-0003 database holding the given rows and returns
    (dsn, schema) for open_store."""
    cleanup: list[Callable[[], Any]] = []

    async def build(write: Callable[[Connection], None]) -> tuple[str, str | None]:
        if engine_kind == "sqlite":
            dsn = f"sqlite:///{tmp_path / 'old.db'}"
            engine = create_engine(dsn)
            with engine.begin() as conn:
                write(conn)
            engine.dispose()
            return dsn, None
        schema = f"iotdps_m4_{secrets.token_hex(4)}"
        admin = create_async_engine(PG_DSN)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))

        async def drop() -> None:
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()

        cleanup.append(drop)
        engine = create_async_engine(PG_DSN, connect_args={"server_settings": {"search_path": schema}})
        async with engine.begin() as conn:
            await conn.run_sync(write)
        await engine.dispose()
        return PG_DSN, schema

    yield build
    for step in cleanup:
        await step()


async def test_registrations_and_enrollments_are_rekeyed(at_0003: Callable[..., Any]) -> None:
    old, new = registration("GDEV-1"), registration("gdev-1")
    rows = _rows(
        [sym_enrollment("Dev-X"), sym_enrollment("dev-y")],
        [
            (old, 1),
            (replace(new, operation_id="op-newer"), 2),
            (registration("Solo-A"), 0),
        ],
    )
    dsn, schema = await at_0003(rows)
    store = await open_store(dsn, schema=schema)
    try:
        async with store.begin() as uow:
            dev_x = await uow.enrollments.get("DEV-x")
            assert dev_x is not None and dev_x.registration_id == "Dev-X"
            assert await uow.enrollments.get("DEV-Y") is not None
            merged = await uow.registrations.get("Gdev-1")
            assert merged is not None and merged.operation_id == "op-newer"  # the most recent kept
            solo = await uow.registrations.get("solo-a")
            assert solo is not None and solo.registration_id == "Solo-A"
            listed = (await uow.registrations.list()).items
            assert sorted(r.registration_id for r in listed) == ["Solo-A", "gdev-1"]
    finally:
        await store.close()


async def test_enrollments_differing_only_in_case_stop_the_migration(at_0003: Callable[..., Any]) -> None:
    dsn, schema = await at_0003(_rows([sym_enrollment("E-1"), sym_enrollment("e-1"), sym_enrollment("f-1")], []))
    with pytest.raises(StoreError, match="individual enrollments E-1 and e-1 differ only in case"):
        await open_store(dsn, schema=schema)
    # Nothing half-done: the database is still at 0003 with both rows, and opens once fixed.
    if schema is None:
        engine = create_engine(dsn)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM individual_enrollments")).scalar() == 3
            conn.execute(text("DELETE FROM individual_enrollments WHERE registration_id = 'e-1'"))
        engine.dispose()
        store = await open_store(dsn)
        try:
            async with store.begin() as uow:
                assert (await uow.enrollments.get("e-1")) is not None
        finally:
            await store.close()
