"""The telemetry group commit against a real SQLite store: what is acknowledged is stored,
each connection gets its share of a batch in one call, a full queue holds the sender back,
stop() writes what was queued, and a failed batch is never acknowledged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from iotdps.hub.records import TelemetryMessage
from iotdps.hub.telemetry import TelemetryWriter
from iotdps.ports import Store
from iotdps.store import open_store


class RecordingAcker:
    """Notes each acknowledge call and how many rows the database file held at that moment."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.calls: list[tuple[list[int], int]] = []
        self.failed = 0

    def acknowledge(self, packet_ids: Sequence[int]) -> None:
        with sqlite3.connect(self.db) as conn:  # another connection: sees only what is committed
            stored = conn.execute("SELECT count(*) FROM hub_telemetry").fetchone()[0]
        self.calls.append((list(packet_ids), stored))

    def store_failed(self) -> None:
        self.failed += 1


def _message(device_id: str, n: int) -> TelemetryMessage:
    return TelemetryMessage("hub-1", device_id, f"body {n}".encode(), dt.datetime.now(dt.UTC))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[Store, Path]]:
    path = tmp_path / "hub.db"
    store = await open_store(f"sqlite:///{path}")
    yield store, path
    await store.close()


async def test_a_batch_is_stored_before_each_connection_gets_its_acks_in_one_call(db: tuple[Store, Path]) -> None:
    store, path = db
    writer = TelemetryWriter(store)
    a, b = RecordingAcker(path), RecordingAcker(path)
    # Queued before the writer starts, so they form one batch.
    for n in range(1, 6):
        assert writer.offer(_message("dev-a", n), a, n)
        assert writer.offer(_message("dev-b", n), b, 100 + n)
    assert writer.offer(_message("dev-a", 0), None, None)  # QoS 0: stored, nothing to ack
    writer.start()
    await writer.stop()
    assert a.calls == [([1, 2, 3, 4, 5], 11)]
    assert b.calls == [([101, 102, 103, 104, 105], 11)]
    assert writer.written == 11 and writer.batches == 1


async def test_a_full_queue_holds_the_sender_until_the_writer_makes_room(db: tuple[Store, Path]) -> None:
    store, path = db
    writer = TelemetryWriter(store, max_batch=2, max_queue=2)
    acker = RecordingAcker(path)
    assert writer.offer(_message("dev-a", 1), acker, 1)
    assert writer.offer(_message("dev-a", 2), acker, 2)
    assert not writer.offer(_message("dev-a", 3), acker, 3)  # full, and nothing was queued
    waiting = asyncio.ensure_future(writer.submit(_message("dev-a", 3), acker, 3))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no writer yet: still held back
    writer.start()
    await asyncio.wait_for(waiting, 5)
    await writer.stop()
    assert [ids for ids, _ in acker.calls] == [[1, 2], [3]]
    assert [stored for _, stored in acker.calls] == [2, 3]


async def test_a_cancelled_sender_leaves_no_waiter_behind(db: tuple[Store, Path]) -> None:
    store, _ = db
    writer = TelemetryWriter(store, max_queue=1)
    assert writer.offer(_message("dev-a", 1), None, None)
    waiting = asyncio.ensure_future(writer.submit(_message("dev-a", 2), None, None))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert writer._room == []
    writer.start()
    await writer.stop()
    assert writer.written == 1  # the cancelled message was never queued


async def test_a_failed_batch_is_not_acknowledged(db: tuple[Store, Path]) -> None:
    store, path = db
    writer = TelemetryWriter(store)
    acker = RecordingAcker(path)
    await store.close()  # every write now fails
    assert writer.offer(_message("dev-a", 1), acker, 1)
    assert writer.offer(_message("dev-a", 2), acker, 2)
    writer.start()
    await writer.stop()
    assert acker.calls == [] and acker.failed == 2
    assert writer.written == 0
