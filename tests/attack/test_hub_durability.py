"""The hub acknowledges telemetry only once it is stored.

A device drops its copy of a QoS 1 message when the PUBACK arrives, so a PUBACK sent before the
store write commits loses the message whenever that write stalls or fails. The writer
(hub/telemetry.py) has tests of its own; these hold the endpoint that feeds it to the promise,
end to end: a real hub over real TLS, a raw MQTT client that sees every packet the hub sends,
and a real SQLite store whose write lock another connection holds (as another process would).
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iotdps.device.credentials import make_hub_sas_token
from iotdps.ports import Store
from iotdps.protocols.mqtt import ClientSession, ConnAckReceived, Event, PubAckReceived
from iotdps.protocols.mqtt.hub import format_telemetry_topic
from iotdps.store import open_store
from iotdps.store.sql import engine as sql_engine
from iotdps_testing.hubkit import HubServer, put_sas_device, start_hub

pytestmark = pytest.mark.e2e

DEVICE = "durable-1"
# Long enough for the writer to try (and retry) its transaction while the lock is held, well
# short of the store's patience for another writer (store.sql.engine.SQLITE_BUSY_WAIT, 5 s).
HOLD = 1.5


@dataclass
class RawDevice:
    """A device made by hand: TLS to the hub's 8883, our sans-IO MQTT client session."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session: ClientSession
    events: list[Event] = field(default_factory=list)
    closed: bool = False

    @classmethod
    async def connect(cls, hub: HubServer, key: str) -> RawDevice:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=hub.ca_pem)
        reader, writer = await asyncio.open_connection(hub.host, 8883, ssl=context, server_hostname=hub.host)
        device = cls(reader, writer, ClientSession())
        token = make_hub_sas_token(hub.host, DEVICE, key, int(time.time()) + 3600)
        username = f"{hub.host}/{DEVICE}/?api-version=2021-04-12"
        writer.write(device.session.connect(DEVICE, username, token, keepalive=60))
        await device.read_until(lambda: any(isinstance(e, ConnAckReceived) for e in device.events), 10)
        assert ConnAckReceived(0, False) in device.events
        return device

    def send_telemetry(self, body: bytes) -> int:
        packet_id, data = self.session.publish(format_telemetry_topic(DEVICE), body, qos=1)
        assert packet_id is not None
        self.writer.write(data)
        return packet_id

    def pubacks(self) -> list[int]:
        return [e.packet_id for e in self.events if isinstance(e, PubAckReceived)]

    async def read_for(self, seconds: float) -> None:
        """Everything the hub sends during `seconds` (less if it closes the connection)."""
        await self.read_until(lambda: False, seconds, must=False)

    async def read_until(self, done: Callable[[], object], seconds: float, *, must: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done() and not self.closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                break
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            self.events.extend(self.session.receive_data(data))
        if must:
            assert done(), f"not within {seconds}s; got {self.events} (closed: {self.closed})"

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@dataclass
class Setup:
    hub: HubServer
    store: Store
    db: Path
    key: str


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    db = tmp_path / "hub.db"
    store = await open_store(f"sqlite:///{db}")
    hub = await start_hub(store)
    key = await put_sas_device(store, hub.host, DEVICE)
    yield Setup(hub, store, db, key)
    await hub.close()
    await store.close()


def lock_writes(db: Path) -> sqlite3.Connection:
    """Another connection takes SQLite's write lock and keeps it until rolled back."""
    other = sqlite3.connect(db, isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")
    return other


def stored_bodies(db: Path) -> list[bytes]:
    with sqlite3.connect(db, timeout=5) as reader:  # sees only what is committed
        return [bytes(row[0]) for row in reader.execute("SELECT body FROM hub_telemetry")]


async def test_telemetry_is_acknowledged_only_after_a_stalled_write_commits(setup: Setup) -> None:
    device = await RawDevice.connect(setup.hub, setup.key)
    body = f"reading {uuid.uuid4()}".encode()
    lock = lock_writes(setup.db)
    try:
        packet_id = device.send_telemetry(body)
        await device.read_for(HOLD)
        assert device.pubacks() == [], "PUBACK while the message could not be written"
        assert not device.closed  # a stall is waited out, not treated as a failure
        assert stored_bodies(setup.db) == []
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    await device.read_until(lambda: device.pubacks(), 10)
    assert device.pubacks() == [packet_id]
    assert stored_bodies(setup.db) == [body]  # committed before the PUBACK was sent
    await device.close()


async def test_telemetry_that_cannot_be_stored_is_never_acknowledged(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How long the store waits for another writer before it gives up: shortened from 5 s, so
    # that the write fails while the lock is still held.
    monkeypatch.setattr(sql_engine, "SQLITE_BUSY_WAIT", 0.3)
    device = await RawDevice.connect(setup.hub, setup.key)
    lost = b"reading that cannot be stored"
    lock = lock_writes(setup.db)
    try:
        device.send_telemetry(lost)
        # The hub closes the connection (so the device resends after reconnecting); the store
        # may first be busy with the hub's other work, hence the long bound.
        await device.read_until(lambda: device.closed or device.pubacks(), 20)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert device.pubacks() == [], "a message that was never stored was acknowledged"
    assert device.closed
    assert stored_bodies(setup.db) == []
    await device.close()

    # The device still holds the message and sends it again: now it is stored and acknowledged.
    again = await RawDevice.connect(setup.hub, setup.key)
    packet_id = again.send_telemetry(lost)
    await again.read_until(lambda: again.pubacks(), 10)
    assert again.pubacks() == [packet_id]
    assert stored_bodies(setup.db) == [lost]
    await again.close()
