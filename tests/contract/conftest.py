"""The store contract suite runs every test against each backend: memory, SQLite, PostgreSQL.

PostgreSQL: the machine's server on 127.0.0.1:5432 (trust auth, database `test`), started here
if it is down. Each session works in a schema of its own, created at the start and dropped at
the end, so concurrent runs do not collide; tables are emptied before every test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.ports import Store
from iotdps.store import SqlStore, open_store
from iotdps.store import tables as t

PG_DSN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REFUSAL_LIMIT = 5
PRUNE_EVERY = 3


def _pg_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _ensure_pg() -> None:
    if _pg_listening():
        return
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
            check=False,
            timeout=60,
            capture_output=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _pg_listening():
            return
        time.sleep(0.5)
    pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started")


async def _pg_exec(*statements: str) -> None:
    engine = create_async_engine(PG_DSN)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    _ensure_pg()
    schema = f"iotdps_contract_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_pg_exec(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        asyncio.run(_pg_exec(f'DROP SCHEMA "{schema}" CASCADE'))


async def open_backend(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: int) -> Store:
    options = {"refusal_limit": REFUSAL_LIMIT, "prune_every": PRUNE_EVERY, **options}
    if backend == "memory":
        return await open_store("memory://", refusal_limit=options["refusal_limit"])
    if backend == "sqlite":
        return await open_store(f"sqlite:///{tmp_path / 'contract.db'}", **options)
    schema = request.getfixturevalue("pg_schema")
    store = await open_store(PG_DSN, schema=schema, **options)
    assert isinstance(store, SqlStore)
    # config_version keeps its one row: the store counts configuration changes in it.
    names = ", ".join(table.name for table in t.metadata.sorted_tables if table is not t.config_version)
    async with store.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return store


BACKENDS = ["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        # Resolved here, outside any event loop: the session fixture runs its own loops.
        request.getfixturevalue("pg_schema")
    return str(request.param)


@pytest.fixture
async def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_backend(backend, request, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()
