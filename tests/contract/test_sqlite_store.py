"""SQLite specifics: the event loop never waits on another writer; cached reads stay true."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from iotdps.enrollment.models import LinkedHub, ServiceSettings
from iotdps.errors import StoreError
from iotdps.store import open_store, sql


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
    monkeypatch.setattr(sql, "SQLITE_BUSY_WAIT", 0.3)
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


async def test_cached_reads_see_another_process_writes(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path / 'shared.db'}"
    server, cli = await open_store(dsn), await open_store(dsn)  # e.g. `iotdps up` and a local admin command
    try:
        for _ in range(2):  # the second read is served from the cache
            async with server.begin() as uow:
                assert await uow.settings.get() is None
                assert await uow.hubs.list() == []
        async with cli.begin() as uow:
            await uow.settings.put(ServiceSettings("0ne00000078"))
            await uow.hubs.put(LinkedHub("hub-a.example", 1, True))
        async with server.begin() as uow:
            assert await uow.settings.get() == ServiceSettings("0ne00000078")
            assert [hub.host_name for hub in await uow.hubs.list()] == ["hub-a.example"]
    finally:
        await server.close()
        await cli.close()


async def test_a_rolled_back_write_never_reaches_the_cache(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'rollback.db'}")
    try:
        async with store.begin() as uow:
            await uow.settings.put(ServiceSettings("0ne00000079"))
        with pytest.raises(RuntimeError):
            async with store.begin() as uow:
                await uow.settings.put(ServiceSettings("0ne000000FF"))
                assert await uow.settings.get() == ServiceSettings("0ne000000FF")  # read inside the transaction
                raise RuntimeError("abandon the transaction")
        async with store.begin() as uow:
            assert await uow.settings.get() == ServiceSettings("0ne00000079")
    finally:
        await store.close()
