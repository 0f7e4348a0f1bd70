"""Three nodes on one PostgreSQL, behind HAProxy on loopback, with NATS: one fleet.

Everything here is real: `iotdps up` subprocesses on their own 127.x addresses, a database of
this test's own, nats-server with JetStream, HAProxy in TCP mode, the unmodified
azure-iot-device SDK. Devices provision and connect through the balancer; a method and a C2D
sent through each node reach a device held by another; the presence every node shows is the
database's; `kill -9` of a node: its devices reconnect through the balancer to the others and
keep sending, and every message the SDK saw acknowledged is in the store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.device import IoTHubDeviceClient, MethodResponse, ProvisioningDeviceClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.access import make_service_sas
from iotdps.audit import Actor
from iotdps.enrollment.models import Attestation, IndividualEnrollment, SymmetricKeyAttestation
from iotdps.provisioning.admin import put_enrollment
from iotdps.secret import Secret
from iotdps.store import open_store
from iotdps_testing.cluster import Balancer, NatsServer, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

DEVICES = 6


@dataclass
class Fleet:
    dsn: str
    service: str
    nodes: list[RunningServer]
    balancer: Balancer
    nats: NatsServer
    ca_pem: str = ""
    id_scope: str = ""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    nats = NatsServer(tmp_path)
    with pg_database() as dsn:
        service = free_loopback_address()
        nodes: list[RunningServer] = []
        balancer: Balancer | None = None
        try:
            # The first node initialises the service before the others join it.
            nodes.append(start_node(tmp_path, service_host=service, dsn=dsn, nats_url=nats.url))
            for _ in range(2):
                nodes.append(start_node(tmp_path, service_host=service, dsn=dsn, nats_url=nats.url))
            balancer = Balancer(tmp_path, [n.address for n in nodes], address=service)
            yield Fleet(dsn, service, nodes, balancer, nats, nodes[0].server_ca, nodes[0].id_scope)
        finally:
            for node in nodes:
                node.stop()
            if balancer is not None:
                balancer.stop()
            nats.stop()


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _enroll(dsn: str, names: list[str]) -> dict[str, str]:
    store = await open_store(dsn)
    keys: dict[str, str] = {}
    try:
        for name in names:
            key = _key()
            att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(_key())))
            await put_enrollment(store, IndividualEnrollment(name, att), actor=Actor("local", "test"))
            keys[name] = key
    finally:
        await store.close()
    return keys


async def _query(dsn: str, sql: str) -> list[Any]:
    engine = create_async_engine(dsn)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).all())
    finally:
        await engine.dispose()


@dataclass
class Device:
    device_id: str
    client: IoTHubDeviceClient
    c2d: queue.Queue[str] = field(default_factory=queue.Queue)
    acked: list[int] = field(default_factory=list)


def _connect(fleet: Fleet, device_id: str, key: str) -> Device:
    provisioning = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=fleet.service,
        registration_id=device_id,
        id_scope=fleet.id_scope,
        symmetric_key=key,
        server_verification_cert=fleet.ca_pem,
    )
    result = provisioning.register()
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == fleet.service
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=fleet.service,
        device_id=device_id,
        server_verification_cert=fleet.ca_pem,
        connection_retry_interval=1,
    )
    device = Device(device_id, client)

    def on_method(request: Any) -> None:
        answer = {"device": device_id, "got": request.payload}
        client.send_method_response(MethodResponse.create_from_method_request(request, 200, answer))

    client.on_method_request_received = on_method
    client.on_message_received = lambda message: device.c2d.put(message.data.decode())
    client.connect()
    return device


def _holders(fleet: Fleet) -> dict[str, str]:
    """device id -> the address of the node that holds its connection (the database's view)."""
    rows = asyncio.run(_query(fleet.dsn, "SELECT device_id, node_id FROM device_presence"))
    nodes = {r[0]: r[1] for r in rows}
    return {device: _node_address(fleet, node) for device, node in nodes.items()}


def _node_address(fleet: Fleet, node_id: str) -> str:
    for node in fleet.nodes:
        if f"node {node_id} joined the cluster" in node.log():
            return node.address
    raise AssertionError(f"no node logged the id {node_id}")


def _hub_api(fleet: Fleet, node: RunningServer, method: str, path: str, body: Any = None) -> requests.Response:
    doc = json.loads((node.data_dir / "access-policies.json").read_text())
    key = next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == "iothubowner")
    token = make_service_sas(f"{fleet.service}:8443", "iothubowner", key)
    return requests.request(
        method,
        f"https://{node.address}:8443{path}",
        json=body,
        headers={"Authorization": token, "Host": f"{fleet.service}:8443"},
        verify=str(fleet.nodes[0].server_ca_path),
        timeout=60,
    )


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_fleet_across_three_nodes(fleet: Fleet) -> None:
    names = [f"cl-dev-{i}" for i in range(DEVICES)]
    keys = asyncio.run(_enroll(fleet.dsn, names))
    devices = [_connect(fleet, name, keys[name]) for name in names]
    try:
        _wait(lambda: len(_holders(fleet)) == DEVICES, 15, "every device's presence")
        holders = _holders(fleet)
        # Round robin through the balancer: the devices are spread over the nodes.
        assert len(set(holders.values())) >= 2, holders

        # Through each node, a method and a C2D to a device held by another node.
        for node in fleet.nodes:
            for device in devices:
                if holders[device.device_id] == node.address:
                    continue
                answer = _hub_api(
                    fleet,
                    node,
                    "POST",
                    f"/twins/{device.device_id}/methods",
                    {"methodName": "ping", "payload": {"via": node.address}, "responseTimeoutInSeconds": 10},
                )
                assert answer.status_code == 200, answer.text
                assert answer.json() == {
                    "status": 200,
                    "payload": {"device": device.device_id, "got": {"via": node.address}},
                }
                sent = _hub_api(
                    fleet,
                    node,
                    "POST",
                    f"/devices/{device.device_id}/messages/deviceBound",
                    {"body": f"via {node.address}"},
                )
                assert sent.status_code in (200, 201, 202), sent.text
                assert device.c2d.get(timeout=15) == f"via {node.address}"
                # connectionState as every node sees it is the cluster's.
                shown = _hub_api(fleet, node, "GET", f"/devices/{device.device_id}")
                assert shown.json()["connectionState"] == "Connected"
                break

        # kill -9 the node that holds the first device; every device keeps sending.
        victim_address = holders[devices[0].device_id]
        victim = next(n for n in fleet.nodes if n.address == victim_address)
        orphans = [d for d in devices if holders[d.device_id] == victim_address]
        stop = threading.Event()
        failures: list[BaseException] = []

        def send_loop(device: Device) -> None:
            for seq in range(1000):  # bounded
                if stop.is_set():
                    return
                try:
                    device.client.send_message(f"{device.device_id} {seq}")
                except BaseException as exc:
                    failures.append(exc)
                    return
                device.acked.append(seq)  # send_message returns once the hub PUBACKed it
                time.sleep(0.05)

        threads = [threading.Thread(target=send_loop, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        before = {d.device_id: len(d.acked) for d in orphans}
        # Its devices come back through the balancer (held by a live node) and send more.
        _wait(
            lambda: all(len(d.acked) >= before[d.device_id] + 5 for d in orphans),
            60,
            "the killed node's devices to send again",
        )
        _wait(
            lambda: all(h != victim_address for h in _holders(fleet).values()) and len(_holders(fleet)) == DEVICES,
            30,
            "presence to move off the killed node",
        )
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not failures, failures
        # Nothing acknowledged is lost: every PUBACKed message is in the store.
        rows = asyncio.run(_query(fleet.dsn, "SELECT convert_from(body, 'UTF8') FROM hub_telemetry"))
        stored = {r[0] for r in rows}
        for device in devices:
            missing = [s for s in device.acked if f"{device.device_id} {s}" not in stored]
            assert not missing, (device.device_id, missing[:10])
    finally:
        for device in devices:
            device.client.shutdown()
