"""A node dies (`kill -9`): what its devices' state becomes on the nodes that remain.

- A device that reconnects through the balancer to another node gets there the cloud-to-device
  message queued while it was away, and its persistent subscriptions (the SDK does not
  subscribe again after a reconnect, so only the stored session makes methods and C2D reach it).
- A device that never reconnects reads `Disconnected` through the surviving node within the
  documented bound, `lease_seconds + heartbeat_seconds` (2.0 + 0.5 here, tests'
  `node_config`), without anyone cleaning up after the dead node.

Real parts: two `iotdps up` nodes on one PostgreSQL, nats-server, HAProxy in TCP mode, the
unmodified azure-iot-device SDK.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, MethodResponse, ProvisioningDeviceClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.access import make_service_sas
from iotdps_testing.cluster import Balancer, NatsServer, enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

LEASE, HEARTBEAT = 2.0, 0.5  # what iotdps_testing.cluster.node_config sets


@dataclass
class Pair:
    dsn: str
    service: str
    nodes: list[RunningServer]
    ca_pem: str
    id_scope: str


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    nats = NatsServer(tmp_path)
    with pg_database() as dsn:
        service = free_loopback_address()
        nodes: list[RunningServer] = []
        balancer: Balancer | None = None
        try:
            for _ in range(2):
                nodes.append(start_node(tmp_path, service_host=service, dsn=dsn, nats_url=nats.url))
            balancer = Balancer(tmp_path, [n.address for n in nodes], address=service)
            yield Pair(dsn, service, nodes, nodes[0].server_ca, nodes[0].id_scope)
        finally:
            for node in nodes:
                node.stop()
            if balancer is not None:
                balancer.stop()
            nats.stop()


def _client(pair: Pair, name: str, *, retry: bool) -> IoTHubDeviceClient:
    key = asyncio.run(enroll_symmetric_key(pair.dsn, name))
    result = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=pair.service,
        registration_id=name,
        id_scope=pair.id_scope,
        symmetric_key=key,
        server_verification_cert=pair.ca_pem,
    ).register()
    assert result.status == "assigned"
    return IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=pair.service,
        device_id=name,
        server_verification_cert=pair.ca_pem,
        connection_retry=retry,
        connection_retry_interval=1,
    )


def _scalar(pair: Pair, sql: str, device_id: str) -> Any:
    async def read() -> Any:
        engine = create_async_engine(pair.dsn)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(sql), {"d": device_id})).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _holder(pair: Pair, device_id: str) -> RunningServer | None:
    """The node the database says holds the device's connection."""
    node_id = _scalar(pair, "SELECT node_id FROM device_presence WHERE device_id = :d", device_id)
    if node_id is None:
        return None
    return next(n for n in pair.nodes if f"node {node_id} joined the cluster" in n.log())


def _hub_api(pair: Pair, node: RunningServer, method: str, path: str, body: Any = None) -> requests.Response:
    doc = json.loads((node.data_dir / "access-policies.json").read_text())
    key = next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == "iothubowner")
    return requests.request(
        method,
        f"https://{node.address}:8443{path}",
        json=body,
        headers={
            "Authorization": make_service_sas(f"{pair.service}:8443", "iothubowner", key),
            "Host": f"{pair.service}:8443",
        },
        verify=str(node.server_ca_path),
        timeout=60,
    )


def _state(pair: Pair, node: RunningServer, device_id: str) -> str:
    return str(_hub_api(pair, node, "GET", f"/devices/{device_id}").json()["connectionState"])


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(node: RunningServer) -> float:
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    return time.monotonic()


def test_pending_c2d_and_subscriptions_follow_the_device_to_another_node(pair: Pair) -> None:
    client = _client(pair, "mover", retry=True)
    got: queue.Queue[str] = queue.Queue()
    client.on_message_received = lambda message: got.put(message.data.decode())

    def on_method(request: Any) -> None:
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"got": request.payload}))

    client.on_method_request_received = on_method  # both subscriptions made on the first node
    client.connect()
    try:
        _wait(lambda: _holder(pair, "mover") is not None, 15, "the device's presence")
        first = _holder(pair, "mover")
        assert first is not None
        other = next(n for n in pair.nodes if n is not first)
        assert _hub_api(pair, other, "POST", "/devices/mover/messages/deviceBound", {"body": "before"}).ok
        assert got.get(timeout=15) == "before"
        # Delivery is at least once: a message stays queued until the device's PUBACK is
        # committed, and one the dying node had not yet completed would come again.
        queued_now = "SELECT count(*) FROM hub_c2d WHERE device_id = :d"
        _wait(lambda: _scalar(pair, queued_now, "mover") == 0, 15, "the first message completed")

        _kill(first)
        # Queued while the device is away (its old node is dead, it has not come back yet).
        queued = _hub_api(pair, other, "POST", "/devices/mover/messages/deviceBound", {"body": "while away"})
        assert queued.status_code == 202, queued.text
        # The SDK reconnects through the balancer, which now has only the other node.
        _wait(lambda: _holder(pair, "mover") is other, 60, "the device to reconnect to the other node")
        assert got.get(timeout=20) == "while away"
        answer = _hub_api(
            pair,
            other,
            "POST",
            "/twins/mover/methods",
            {"methodName": "ping", "payload": {"n": 1}, "responseTimeoutInSeconds": 10},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": 200, "payload": {"got": {"n": 1}}}
        assert _hub_api(pair, other, "POST", "/devices/mover/messages/deviceBound", {"body": "after"}).ok
        assert got.get(timeout=15) == "after"
    finally:
        client.shutdown()


def test_a_dead_nodes_device_reads_disconnected_within_the_bound(pair: Pair) -> None:
    client = _client(pair, "stranded", retry=False)  # it will not come back
    client.connect()
    try:
        _wait(lambda: _holder(pair, "stranded") is not None, 15, "the device's presence")
        holder = _holder(pair, "stranded")
        assert holder is not None
        survivor = next(n for n in pair.nodes if n is not holder)
        assert _state(pair, survivor, "stranded") == "Connected"
        killed_at = _kill(holder)
        _wait(lambda: _state(pair, survivor, "stranded") == "Disconnected", 30, "Disconnected on the survivor")
        took = time.monotonic() - killed_at
        # The bound, plus one request's latency on a shared machine.
        assert took <= LEASE + HEARTBEAT + 1.0, f"{took:.2f} s"
        # And it is not a blip: it stays disconnected.
        time.sleep(HEARTBEAT * 2)
        assert _state(pair, survivor, "stranded") == "Disconnected"
    finally:
        client.shutdown()
