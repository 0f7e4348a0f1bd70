"""`iotdps up` on SQLite copies the write-ahead log into the database on a thread of its own.

Checked on a real database file: after enough commits the database file by itself, copied
without its -wal file, holds them (a checkpoint ran, and not inside a commit: the store's own
connection only checkpoints past BACKSTOP_PAGES); closing the store stops the thread; a store
opened without the option (the CLI's) starts none.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from iotdps.allocation.hubs import LinkedHub
from iotdps.store import SqlStore, open_store
from iotdps.store._checkpoint import BACKSTOP_PAGES

THREAD = "iotdps-wal-checkpoint"


def _checkpoint_threads() -> list[threading.Thread]:
    return [th for th in threading.enumerate() if th.name == THREAD]


async def _add_hubs(store: SqlStore, count: int) -> None:
    for i in range(count):
        async with store.begin() as uow:
            await uow.hubs.put(LinkedHub(f"hub-{i}.example.test", 1, True))


def _hubs_in_file_alone(db: Path, tmp_path: Path) -> int:
    """Rows of linked_hubs in a copy of the database file without its -wal file."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(db, alone)
    conn = sqlite3.connect(alone)
    try:
        return int(conn.execute("SELECT count(*) FROM linked_hubs").fetchone()[0])
    except sqlite3.DatabaseError:
        # No such table (the schema itself is still in the log), or a copy torn by a
        # checkpoint writing the file as it was copied: nothing countable yet, ask again.
        return 0
    finally:
        conn.close()


async def test_commits_reach_the_database_file_from_the_checkpoint_thread(tmp_path: Path) -> None:
    db = tmp_path / "iotdps.db"
    store = await open_store(f"sqlite:///{db}", background_checkpoints=True)
    assert isinstance(store, SqlStore)
    try:
        raw = store.engine.raw_connection().driver_connection
        assert raw is not None
        assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
        assert len(_checkpoint_threads()) == 1
        await _add_hubs(store, 300)  # more than one wake-up's worth of commits
        # All of them, the last 44 within the thread's idle interval (a second).
        deadline = time.monotonic() + 10
        seen = _hubs_in_file_alone(db, tmp_path)
        while seen < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            seen = _hubs_in_file_alone(db, tmp_path)
        assert seen == 300
    finally:
        await store.close()
    assert _checkpoint_threads() == []


async def test_a_store_opened_without_the_option_starts_no_thread(tmp_path: Path) -> None:
    db = tmp_path / "iotdps.db"
    store = await open_store(f"sqlite:///{db}")
    try:
        await _add_hubs(store, 5)
        assert _checkpoint_threads() == []
    finally:
        await store.close()
