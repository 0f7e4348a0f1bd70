"""The cluster bus as an attack surface: whatever lands on a node's NATS subjects (not JSON,
wrong shapes, huge or deeply nested documents, forged node ids) is dropped without harm: no
exception into the NATS client, no device closed, no method run, and the node goes on serving
genuine messages.

Real parts: nats-server, a PostgreSQL database of the test's own with the cluster tables,
`ClusterLive` as a node runs it; its local side is a recorder of what would reach devices.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as Nats

from iotdps.server.cluster_live import MAX_MESSAGE, ClusterLive
from iotdps.store import open_store
from iotdps.store.sql.cluster import ClusterDb, cluster_db
from iotdps_testing.cluster import NatsServer, pg_database

pytestmark = [pytest.mark.postgres]

HUB, DEVICE = "hub.example.net", "dev-1"


class LocalDevices:
    """This node's devices: `dev-1` is connected here; every call is recorded."""

    def __init__(self) -> None:
        self.connected = {(HUB, DEVICE)}
        self.calls: list[tuple[Any, ...]] = []

    def is_connected(self, hub: str, device_id: str) -> bool:
        return (hub, device_id) in self.connected

    def connected_count(self, hub: str) -> int:
        return sum(1 for h, _ in self.connected if h == hub)

    def disconnect(self, hub: str, device_id: str, reason: str) -> bool:
        self.calls.append(("disconnect", hub, device_id))
        self.connected.discard((hub, device_id))
        return True

    def recheck(self, hub: str, device_id: str) -> None:
        # Harmless even when forged: the real one re-checks against the stored identity.
        self.calls.append(("recheck", hub, device_id))

    async def push_desired(self, hub: str, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        self.calls.append(("desired", hub, device_id, dict(patch), version))

    def deliver_c2d(self, hub: str, device_id: str) -> None:
        self.calls.append(("c2d", hub, device_id))

    async def call_method(self, hub: str, device_id: str, name: str, payload: bytes, timeout: float) -> tuple[int, Any]:
        self.calls.append(("method", hub, device_id, name, payload, timeout))
        return 200, {"ok": True}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


class Node:
    def __init__(self, live: ClusterLive, local: LocalDevices, db: ClusterDb, bus: Nats) -> None:
        self.live, self.local, self.db, self.bus = live, local, db, bus

    async def send(self, subject: str, data: bytes) -> None:
        await self.bus.publish(f"iotdps.{subject}", data)
        await self.bus.flush()

    async def settle(self, *subjects: str) -> None:
        """Wait until each subject's handler got a genuine message sent after the attack ones
        (a subscription handles its messages in order; subjects are not ordered among each
        other), proving it still serves; then forget what the markers did."""
        for subject in subjects or ("presence", "c2d", "desired", "disconnect", "recheck"):
            if subject == "presence":
                for connected in (True, False):
                    body = {"node": "node-m", "hub": HUB, "device": "marker", "connected": connected}
                    await self.send("presence", json.dumps(body).encode())
                    await self._until(lambda c=connected: self.live.is_connected(HUB, "marker") == c)
                continue
            body = {"hub": HUB, "device": "marker", "patch": {}, "version": 1}
            await self.send(subject, json.dumps(body).encode())
            await self._until(lambda: any(call[2] == "marker" for call in self.local.calls))
            self.local.calls = [call for call in self.local.calls if call[2] != "marker"]

    @staticmethod
    async def _until(condition: Callable[[], bool]) -> None:
        for _ in range(200):  # bounded: 10 s
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the node stopped serving genuine messages")


@pytest.fixture
async def node(broker: NatsServer, dsn: str) -> AsyncIterator[Node]:
    store = await open_store(dsn)
    db = cluster_db(store)
    assert db is not None
    local = LocalDevices()
    own = await nats.connect(broker.url)
    live = ClusterLive(local, db, own, "node-a", heartbeat=30, lease=60)
    await live.start()
    await db.set_present(HUB, DEVICE, "node-a")
    attacker = await nats.connect(broker.url)
    try:
        yield Node(live, local, db, attacker)
    finally:
        await attacker.close()
        await live.stop()
        await own.close()
        await store.close()


def _deep(levels: int) -> bytes:
    return ("[" * levels + "]" * levels).encode()


GARBAGE: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe\x00binary",
    b"[]",
    b"42",
    b"null",
    b'"a string"',
    b"{}",
    b'{"hub": 1, "device": 2}',
    b'{"hub": null, "device": null, "node": null}',
    b'{"hub": "", "device": "", "node": ""}',
    json.dumps({"hub": "h" * 10_000, "device": DEVICE, "node": "x"}).encode(),
    b'{"hub": "hub.example.net", "device": "dev-1", "node": "b", "connected": NaN}',
    b'{"hub": "hub.example.net", "device": "dev-1", "patch": ' + _deep(5000) + b', "version": 1}',
    _deep(100_000),
]


@pytest.mark.parametrize("subject", ["presence", "c2d", "desired", "disconnect", "recheck"])
async def test_malformed_broadcasts_are_dropped(node: Node, subject: str) -> None:
    for data in GARBAGE:
        await node.send(subject, data)
    await node.settle(subject)
    assert node.local.calls == []
    assert node.live.dropped >= len(GARBAGE)
    assert node.live.is_connected(HUB, DEVICE)


async def test_wrong_shapes_reach_no_device(node: Node) -> None:
    shapes: list[tuple[str, Any]] = [
        ("desired", {"hub": HUB, "device": DEVICE, "patch": [1, 2], "version": 1}),
        ("desired", {"hub": HUB, "device": DEVICE, "patch": {"a": 1}, "version": "1"}),
        ("desired", {"hub": HUB, "device": DEVICE, "patch": {"a": 1}, "version": True}),
        ("desired", {"hub": HUB, "device": DEVICE, "patch": {"a": 1}}),
        ("c2d", {"hub": HUB, "device": ["dev-1"]}),
        ("disconnect", {"hub": {"x": 1}, "device": DEVICE}),
        ("recheck", {"hub": HUB, "device": 1}),
        ("presence", {"node": 7, "hub": HUB, "device": DEVICE, "connected": True}),
    ]
    for subject, body in shapes:
        await node.send(subject, json.dumps(body).encode())
    await node.settle()
    assert node.local.calls == []
    assert node.live.dropped == len(shapes)


async def test_huge_payloads_are_dropped(node: Node) -> None:
    # Under the broker's 1 MiB limit, over ours: dropped unread.
    patch = {"blob": "x" * (MAX_MESSAGE + 1)}
    await node.send("desired", json.dumps({"hub": HUB, "device": DEVICE, "patch": patch, "version": 2}).encode())
    await node.settle("desired")
    assert node.local.calls == []
    assert node.live.dropped == 1


async def test_a_forged_node_id_cannot_close_a_device(node: Node) -> None:
    """`dev-1` is connected here (and the database says so): a presence message claiming that
    another node now holds it is not believed, so the device keeps its connection."""
    forged = {"node": "node-evil", "hub": HUB, "device": DEVICE, "connected": True}
    await node.send("presence", json.dumps(forged).encode())
    await node.settle("presence")
    assert ("disconnect", HUB, DEVICE) not in node.local.calls
    assert node.live.dropped == 1
    # The genuine move: node-b wrote its presence first, then said so; now the stale local
    # connection is closed.
    await node.db.heartbeat("node-b")
    await node.db.set_present(HUB, DEVICE, "node-b")
    await node.send("presence", json.dumps({**forged, "node": "node-b"}).encode())
    await node.settle("presence")
    assert ("disconnect", HUB, DEVICE) in node.local.calls


async def test_malformed_method_requests_get_an_error_answer_and_run_nothing(node: Node) -> None:
    subject = "node.node-a.method"
    good = {"hub": HUB, "device": DEVICE, "name": "reboot", "payload": base64.b64encode(b"{}").decode(), "timeout": 5}
    bad: list[dict[str, Any]] = [
        {**good, "timeout": 1e9},
        {**good, "timeout": -1},
        {**good, "timeout": "soon"},
        {**good, "payload": "!!!not base64!!!"},
        {k: v for k, v in good.items() if k != "payload"},
    ]
    for body in bad:
        reply = await node.bus.request(f"iotdps.{subject}", json.dumps(body).encode(), timeout=5)
        answer = json.loads(reply.data)
        assert answer["error"] == "bad_request", answer
    # Not JSON (json.dumps writes NaN as a bare NaN), or a name that is not a string: no answer
    # at all (the caller's request times out).
    nan = json.dumps({**good, "timeout": float("nan")}).encode()
    for data in (b"garbage", nan, json.dumps({**good, "name": 5}).encode()):
        with pytest.raises(nats.errors.TimeoutError):
            await node.bus.request(f"iotdps.{subject}", data, timeout=0.5)
    assert node.local.calls == []
    reply = await node.bus.request(f"iotdps.{subject}", json.dumps(good).encode(), timeout=5)
    assert json.loads(reply.data) == {"status": 200, "payload": {"ok": True}}
    assert node.local.calls == [("method", HUB, DEVICE, "reboot", b"{}", 5.0)]
