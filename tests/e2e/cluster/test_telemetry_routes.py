"""Telemetry to NATS: an independent nats-py subscriber sees every device's messages in order,
and the JetStream stream holds them for replay. A real node on PostgreSQL, a real nats-server,
the unmodified azure-iot-device SDK sending through the node's hub."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient

from iotdps_testing.cluster import NatsServer, enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PER_DEVICE = 25


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


def _send(host: str, scope: str, ca: str, name: str, key: str) -> None:
    result = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=host, registration_id=name, id_scope=scope, symmetric_key=key, server_verification_cert=ca
    ).register()
    assert result.status == "assigned"
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=host, device_id=name, server_verification_cert=ca
    )
    client.connect()
    try:
        for i in range(PER_DEVICE):
            client.send_message(f"{name} {i}")
    finally:
        client.shutdown()


def test_nats_subscriber_sees_telemetry_in_order_and_the_stream_replays(tmp_path: Path, dsn: str) -> None:
    broker = NatsServer(tmp_path)
    node = None
    try:
        host = free_loopback_address()
        node = start_node(
            tmp_path,
            service_host=host,
            address=host,
            dsn=dsn,
            nats_url=broker.url,
            extra='[telemetry]\nroutes = ["sql", "nats"]\nnats_stream = "TELEMETRY"\n',
        )
        names = ["tr-a", "tr-b"]
        keys = {n: asyncio.run(enroll_symmetric_key(dsn, n)) for n in names}
        seen: dict[str, list[str]] = {n: [] for n in names}
        ready, done = threading.Event(), threading.Event()

        async def subscribe() -> None:
            nc = await nats.connect(broker.url)
            try:

                async def on_message(msg: nats.aio.msg.Msg) -> None:
                    device = msg.subject.rsplit(".", 1)[1]
                    seen[device].append(msg.data.decode())
                    if all(len(v) >= PER_DEVICE for v in seen.values()):
                        done.set()

                await nc.subscribe(f"iotdps.telemetry.{host.replace('.', '%2E')}.>", cb=on_message)
                await nc.flush()
                ready.set()
                for _ in range(600):  # bounded: 60 s
                    if done.is_set():
                        break
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()

        listener = threading.Thread(target=lambda: asyncio.run(subscribe()), daemon=True)
        listener.start()
        assert ready.wait(15)
        senders = [
            threading.Thread(target=_send, args=(host, node.id_scope, node.server_ca, n, keys[n])) for n in names
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        listener.join(70)
        for name in names:
            assert seen[name] == [f"{name} {i}" for i in range(PER_DEVICE)]

        async def replay() -> list[str]:
            nc = await nats.connect(broker.url)
            try:
                js = nc.jetstream()
                sub = await js.subscribe(f"iotdps.telemetry.*.{names[0]}", ordered_consumer=True)
                out = []
                for _ in range(PER_DEVICE):
                    msg = await sub.next_msg(timeout=10)
                    out.append(msg.data.decode())
                return out
            finally:
                await nc.close()

        assert asyncio.run(replay()) == [f"{names[0]} {i}" for i in range(PER_DEVICE)]
    finally:
        if node is not None:
            node.stop()
        broker.stop()
