"""A device's live connection follows its identity across a cluster (issue 18): the device is
connected to its hub on one node with its SAS key, registers again through another node after
the operator gave its enrollment new keys, and the node holding the connection closes it (told
over NATS) within about a second, as it would a revoked device's. Real nodes on one PostgreSQL,
nats-server, real TLS, our device client for the registrations, a raw MQTT client on the hub."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotdps.audit import Actor
from iotdps.device import SymmetricKey
from iotdps.device.credentials import make_hub_sas_token
from iotdps.device.provision import provision
from iotdps.enrollment.models import Attestation, IndividualEnrollment, SymmetricKeyAttestation
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps.provisioning.admin import put_enrollment
from iotdps.secret import Secret
from iotdps.store import open_store
from iotdps_testing.cluster import NatsServer, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, str, RunningServer, RunningServer]]:
    nats = NatsServer(tmp_path)
    with pg_database() as dsn:
        service = free_loopback_address()
        nodes: list[RunningServer] = []
        try:
            nodes.append(start_node(tmp_path, service_host=service, dsn=dsn, nats_url=nats.url))
            nodes.append(start_node(tmp_path, service_host=service, dsn=dsn, nats_url=nats.url))
            yield dsn, service, nodes[0], nodes[1]
        finally:
            for node in nodes:
                node.stop()
            nats.stop()


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def _enroll(dsn: str, rid: str, key: str) -> None:
    store = await open_store(dsn)
    try:
        att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(_key())))
        await put_enrollment(store, IndividualEnrollment(rid, att), actor=Actor("local", "test"))
    finally:
        await store.close()


def _hub_connection(node: RunningServer, hub: str, device_id: str, key: str) -> ssl.SSLSocket:
    """An MQTT connection to `hub` on `node` (not through a balancer), admitted with `key`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=node.server_ca)
    tls = context.wrap_socket(socket.create_connection((node.address, 8883), timeout=10), server_hostname=hub)
    session = ClientSession()
    token = make_hub_sas_token(hub, device_id, key, int(time.time()) + 600)
    tls.sendall(session.connect(device_id, f"{hub}/{device_id}/?api-version=2021-04-12", token))
    events = session.receive_data(tls.recv(65536))
    assert any(isinstance(e, ConnAckReceived) and e.return_code == 0 for e in events), events
    return tls


def _closed_within(tls: ssl.SSLSocket, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tls.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not tls.recv(65536):
                return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError):
            return True
    return False


def test_new_keys_registered_on_one_node_close_the_old_keys_connection_on_another(
    two_nodes: tuple[str, str, RunningServer, RunningServer],
) -> None:
    dsn, service, node_a, node_b = two_nodes
    rid, old_key, new_key = "recheck-1", _key(), _key()
    asyncio.run(_enroll(dsn, rid, old_key))
    first = asyncio.run(
        provision(node_a.address, node_a.id_scope, rid, SymmetricKey(Secret(old_key)), ca_pem=node_a.server_ca)
    )
    assert first.assigned_hub == service
    tls = _hub_connection(node_b, service, first.device_id, old_key)
    try:
        time.sleep(1.0)  # node A learns where the device is (presence broadcast)
        asyncio.run(_enroll(dsn, rid, new_key))  # the operator rotates the enrollment's keys
        asyncio.run(
            provision(node_a.address, node_a.id_scope, rid, SymmetricKey(Secret(new_key)), ca_pem=node_a.server_ca)
        )
        assert _closed_within(tls, 3.0), "the connection made with the old key outlived it"
    finally:
        tls.close()
    assert f"device {first.device_id} disconnected: its identity changed" in node_b.log()
    fresh = _hub_connection(node_b, service, first.device_id, new_key)  # the new key works
    fresh.close()
