"""SQLite runs on the event loop's thread: another process's writer must not freeze the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from iotdps.errors import StoreError
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import open_store
from iotdps.store.sql import engine as sql_engine


async def test_waits_for_another_writer_while_the_loop_keeps_running(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    store = await open_store(f"sqlite:///{db}")
    other = sqlite3.connect(db, isolation_level=None)  # another process's connection, as far as SQLite knows
    try:
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def write() -> None:
            async with store.begin() as uow:
                await uow.settings.put(ServiceSettings("0ne00000077"))

        ticking = asyncio.create_task(ticker())
        writing = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert not writing.done()  # still waiting for the lock...
        assert ticks >= 10  # ...while other coroutines ran
        other.execute("COMMIT")
        await asyncio.wait_for(writing, 5)
        ticking.cancel()
        async with store.begin() as uow:
            assert await uow.settings.get() == ServiceSettings("0ne00000077")
    finally:
        other.close()
        await store.close()


async def test_gives_up_with_a_store_error_when_the_lock_is_never_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "stuck.db"
    store = await open_store(f"sqlite:///{db}")
    monkeypatch.setattr(sql_engine, "SQLITE_BUSY_WAIT", 0.3)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            async with store.begin() as uow:
                await uow.settings.get()
        other.execute("ROLLBACK")
        async with store.begin() as uow:  # usable again once the other writer is gone
            assert await uow.settings.get() is None
    finally:
        other.close()
        await store.close()


async def test_a_read_only_unit_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    """Authentication reads (store.read) take a snapshot, not the write lock: a device is
    authenticated while an admin command holds a write transaction, and sees the last commit."""
    db = tmp_path / "busy.db"
    store = await open_store(f"sqlite:///{db}")
    async with store.begin() as uow:
        await uow.settings.put(ServiceSettings("0ne00000066"))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE service_settings SET etag = 'uncommitted'")
        async with asyncio.timeout(0.5), store.read() as uow:
            assert await uow.settings.get() == ServiceSettings("0ne00000066")
    finally:
        other.execute("ROLLBACK")
        other.close()
        await store.close()
