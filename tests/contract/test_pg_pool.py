"""The PostgreSQL store keeps its sessions open between units of work, and the DSN sizes its pool.

A session closed after every unit beyond the pool's fifth cost a backend process, its
authentication and asyncpg's type setup each time: most of the database's CPU under 20
registrations in flight (bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from iotdps.errors import InvalidInput
from iotdps.store import SqlStore, open_store

from .conftest import PG_DSN

pytestmark = pytest.mark.postgres


async def _backend_pids(store: SqlStore, in_flight: int, rounds: int) -> set[int]:
    """Backend pids seen by `rounds` waves of `in_flight` connections held together a moment."""
    seen: set[int] = set()

    async def one() -> None:
        async with store.engine.connect() as conn:  # type: ignore[union-attr]
            seen.add(int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            await asyncio.sleep(0.05)

    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(in_flight)))
    return seen


async def test_twenty_units_in_flight_reuse_their_sessions(pg_schema: str) -> None:
    store = await open_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, SqlStore)
    try:
        pids = await _backend_pids(store, in_flight=20, rounds=5)
    finally:
        await store.close()
    # SQLAlchemy's default pool opened 5 + 10 new sessions per wave here: 55 in all.
    assert len(pids) <= 20


async def test_dsn_sets_the_pool_size(pg_schema: str) -> None:
    store = await open_store(f"{PG_DSN}?pool_size=3&max_overflow=0", schema=pg_schema)
    assert isinstance(store, SqlStore)
    try:
        # The pool's size, not a connection argument: asyncpg would refuse an unknown one.
        pids = await _backend_pids(store, in_flight=6, rounds=2)
    finally:
        await store.close()
    assert len(pids) == 3


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_size=lots", "pool_size must be one whole number from 1 to 1000"),
        ("pool_size=0", "pool_size must be one whole number from 1 to 1000"),
        ("max_overflow=-1", "max_overflow must be one whole number from 0 to 1000"),
        ("pool_size=2&pool_size=3", "pool_size must be one whole number"),
    ],
)
async def test_bad_pool_settings_are_refused(query: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await open_store(f"{PG_DSN}?{query}")


async def test_pool_settings_apply_to_postgresql_only(tmp_path: object) -> None:
    with pytest.raises(InvalidInput, match="apply to PostgreSQL only"):
        await open_store(f"sqlite:///{tmp_path}/x.db?pool_size=3")
