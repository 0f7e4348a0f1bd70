"""The unmodified azure-iot-device 2.14.0 IoTHubDeviceClient against our hub, over real TLS.

The SDK is synchronous: every call runs in a thread while the hub runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, Message, MethodResponse
from azure.iot.device.exceptions import CredentialError

from iotdps.hub.errors import DeviceNotConnected
from iotdps.hub.stamps import identity_properties
from iotdps.ports import HubStore
from iotdps.store import MemoryStore, open_store
from iotdps_testing.devcerts import self_signed_device
from iotdps_testing.hubkit import HubServer, put_sas_device, put_x509_device, start_hub, wait_for

pytestmark = pytest.mark.e2e
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("paho").setLevel(logging.WARNING)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    store = await open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    server = await start_hub(store, websockets=True)
    yield server
    await server.close()
    await store.close()


def sas_client(hub: HubServer, device_id: str, key: str, **kw: Any) -> IoTHubDeviceClient:
    return IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub.host, device_id=device_id, server_verification_cert=hub.ca_pem, **kw
    )


async def shutdown(client: IoTHubDeviceClient) -> None:
    await asyncio.to_thread(client.shutdown)


class Inbox:
    """Thread-safe queues the SDK's handlers fill."""

    def __init__(self, client: IoTHubDeviceClient, method_answer: Any = None) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.methods: queue.Queue[Any] = queue.Queue()
        self.patches: queue.Queue[dict[str, Any]] = queue.Queue()

        def on_method(request: Any) -> None:
            self.methods.put(request)
            answer = {"echo": request.payload, "name": request.name}
            client.send_method_response(MethodResponse.create_from_method_request(request, 200, answer))

        client.on_message_received = self.messages.put
        client.on_method_request_received = on_method
        client.on_twin_desired_properties_patch_received = self.patches.put


async def test_sas_device_telemetry_twin_methods_c2d(hub: HubServer) -> None:
    key = await put_sas_device(hub.store, hub.host, "dev-1")
    client = sas_client(hub, "dev-1", key)
    try:
        await asyncio.to_thread(client.connect)
        inbox = await asyncio.to_thread(Inbox, client)

        # Telemetry: PUBACKed once stored, with decoded system and application properties.
        msg = Message('{"t": 21.5}', message_id="mid-1", content_encoding="utf-8", content_type="application/json")
        msg.correlation_id = "cid 1"
        msg.custom_properties = {"alert": "yes please", "path": "a/b&c=d"}
        await asyncio.to_thread(client.send_message, msg)
        hs: HubStore = hub.store  # type: ignore[assignment]
        async with hs.begin() as uow:
            rows = await uow.telemetry.list(hub.host, "dev-1")
        assert len(rows) == 1
        row = rows[0]
        assert row.body == b'{"t": 21.5}'
        device = await hub.hubs.requests.get_device(hub.host, "dev-1")
        assert device is not None
        assert row.system_properties == {
            "message_id": "mid-1",
            "correlation_id": "cid 1",
            "content_type": "application/json",
            "content_encoding": "utf-8",
            # Stamped by the hub, not sent by the device.
            **identity_properties(device, "sas"),
        }
        assert row.application_properties == {"alert": "yes please", "path": "a/b&c=d"}
        assert row.device_id == "dev-1" and row.enqueued.tzinfo is not None

        # Twin GET has both versions; a reported patch bumps the reported version.
        twin = await asyncio.to_thread(client.get_twin)
        assert twin["desired"]["$version"] == 1 and twin["reported"]["$version"] == 1
        await asyncio.to_thread(client.patch_twin_reported_properties, {"fw": "1.0", "nested": {"a": 1}})
        await asyncio.to_thread(client.patch_twin_reported_properties, {"nested": {"b": 2}})
        device = await hub.hubs.requests.get_device(hub.host, "dev-1")
        assert device is not None
        assert device.twin.reported == {"fw": "1.0", "nested": {"a": 1, "b": 2}}
        assert device.twin.reported_version == 3

        # Desired patch pushed to the connected device, with its $version.
        await asyncio.sleep(0.3)  # the SDK's subscribes were sent when the handlers were set
        updated = await hub.hubs.cloud.update_desired(hub.host, "dev-1", {"interval": 5})
        patch = await wait_for(inbox.patches)
        assert patch == {"interval": 5, "$version": updated.desired_version} and updated.desired_version == 2
        twin = await asyncio.to_thread(client.get_twin)
        assert twin["desired"] == {"interval": 5, "$version": 2}

        # Direct method round trip.
        status, payload = await hub.hubs.cloud.invoke_method(hub.host, "dev-1", "reboot", {"delay": 1}, 10)
        assert status == 200 and payload == {"echo": {"delay": 1}, "name": "reboot"}

        # Cloud-to-device with properties; it leaves the queue once PUBACKed.
        mid = await hub.hubs.cloud.send_c2d(hub.host, "dev-1", b"hello device", {"k": "v/1", "$.cid": "c-9"}, 60)
        received = await wait_for(inbox.messages)
        assert received.data == b"hello device" and received.message_id == mid
        assert received.correlation_id == "c-9" and received.custom_properties == {"k": "v/1"}
        for _ in range(50):
            async with hs.begin() as uow:
                if await uow.c2d.count(hub.host, "dev-1") == 0:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the PUBACKed C2D message is still queued")
    finally:
        await shutdown(client)


async def test_c2d_sent_while_offline_is_delivered_on_reconnect_and_expired_ones_are_not(hub: HubServer) -> None:
    key = await put_sas_device(hub.store, hub.host, "dev-2")
    client = sas_client(hub, "dev-2", key)
    try:
        await asyncio.to_thread(client.connect)
        inbox = await asyncio.to_thread(Inbox, client)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(client.disconnect)
        # The SDK's disconnect returns once DISCONNECT is written; the hub closes the session
        # when it reads it. Wait for that, or the method below may find the device still online.
        for _ in range(100):
            if not hub.hubs.cloud.is_connected(hub.host, "dev-2"):
                break
            await asyncio.sleep(0.05)
        assert not hub.hubs.cloud.is_connected(hub.host, "dev-2")
        await hub.hubs.cloud.send_c2d(hub.host, "dev-2", b"short-lived", {}, 0.2)
        await hub.hubs.cloud.send_c2d(hub.host, "dev-2", b"waiting", {}, 60)
        await hub.hubs.cloud.update_desired(hub.host, "dev-2", {"mode": "eco"})
        with pytest.raises(DeviceNotConnected):
            await hub.hubs.cloud.invoke_method(hub.host, "dev-2", "x", None, 1)
        await asyncio.sleep(0.4)  # the first message expires
        await asyncio.to_thread(client.connect)  # no re-subscribe: the session kept them
        received = await wait_for(inbox.messages)
        assert received.data == b"waiting"
        patch = await wait_for(inbox.patches)
        assert patch["mode"] == "eco" and patch["$version"] == 2
        status, _ = await hub.hubs.cloud.invoke_method(hub.host, "dev-2", "ping", None, 10)
        assert status == 200
        with pytest.raises(queue.Empty):
            inbox.messages.get(timeout=0.3)
    finally:
        await shutdown(client)


async def test_token_renewal_keeps_c2d_and_methods(hub: HubServer) -> None:
    key = await put_sas_device(hub.store, hub.host, "dev-ttl")
    # The SDK renews at se - 120 s: with a 125 s token it reconnects after about 5 s and
    # never re-subscribes.
    client = sas_client(hub, "dev-ttl", key, sastoken_ttl=125)
    try:
        await asyncio.to_thread(client.connect)
        inbox = await asyncio.to_thread(Inbox, client)
        await asyncio.sleep(0.3)
        before = hub.connects
        for _ in range(100):
            if hub.connects > before:
                break
            await asyncio.sleep(0.1)
        assert hub.connects > before, "the SDK did not renew its token"
        for _ in range(50):
            if hub.hubs.cloud.is_connected(hub.host, "dev-ttl"):
                break
            await asyncio.sleep(0.1)
        status, payload = await hub.hubs.cloud.invoke_method(hub.host, "dev-ttl", "after-renewal", 7, 10)
        assert status == 200 and payload["echo"] == 7
        await hub.hubs.cloud.send_c2d(hub.host, "dev-ttl", b"still here", {}, 60)
        assert (await wait_for(inbox.messages)).data == b"still here"
    finally:
        await shutdown(client)


async def test_x509_device_by_thumbprint_and_refusals(hub: HubServer, tmp_path: Path) -> None:
    good = self_signed_device(tmp_path, "dev-x")
    await put_x509_device(hub.store, hub.host, good)
    other = self_signed_device(tmp_path, "dev-y")  # registered with another certificate's thumbprint
    (tmp_path / "old").mkdir()
    await put_x509_device(hub.store, hub.host, self_signed_device(tmp_path / "old", "dev-y"))
    x = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(str(good.cert_file), str(good.key_file)),
        hostname=hub.host,
        device_id="dev-x",
        server_verification_cert=hub.ca_pem,
    )
    try:
        await asyncio.to_thread(x.connect)
        await asyncio.to_thread(x.send_message, "from x509")
        hs: HubStore = hub.store  # type: ignore[assignment]
        async with hs.begin() as uow:
            assert [m.body for m in await uow.telemetry.list(hub.host, "dev-x")] == [b"from x509"]
    finally:
        await shutdown(x)
    y = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(str(other.cert_file), str(other.key_file)),
        hostname=hub.host,
        device_id="dev-y",
        server_verification_cert=hub.ca_pem,
    )
    try:
        with pytest.raises(CredentialError):
            await asyncio.to_thread(y.connect)
    finally:
        await shutdown(y)


async def test_disabled_device_and_wrong_key_are_refused_with_connack_5(hub: HubServer) -> None:
    key = await put_sas_device(hub.store, hub.host, "dev-off", status="disabled")
    client = sas_client(hub, "dev-off", key, connection_retry=False)
    try:
        with pytest.raises(CredentialError):
            await asyncio.to_thread(client.connect)
    finally:
        await shutdown(client)
    await put_sas_device(hub.store, hub.host, "dev-key")
    wrong = sas_client(hub, "dev-key", key, connection_retry=False)
    try:
        with pytest.raises(CredentialError):
            await asyncio.to_thread(wrong.connect)
    finally:
        await shutdown(wrong)


async def test_websocket_device_and_one_connection_per_device(hub: HubServer) -> None:
    key = await put_sas_device(hub.store, hub.host, "dev-ws")
    first = sas_client(hub, "dev-ws", key, websockets=True, connection_retry=False)
    second = sas_client(hub, "dev-ws", key)
    try:
        await asyncio.to_thread(first.connect)
        await asyncio.to_thread(first.send_message, "over websockets")
        await asyncio.to_thread(second.connect)
        for _ in range(50):
            if not first.connected:
                break
            await asyncio.sleep(0.1)
        assert not first.connected and second.connected
        await asyncio.to_thread(second.send_message, "over tcp")
        hs: HubStore = hub.store  # type: ignore[assignment]
        async with hs.begin() as uow:
            bodies = [m.body for m in await uow.telemetry.list(hub.host, "dev-ws")]
        assert bodies == [b"over websockets", b"over tcp"]
    finally:
        await shutdown(first)
        await shutdown(second)


async def test_memory_store_works_too() -> None:
    store = MemoryStore()
    hub = await start_hub(store)
    key = await put_sas_device(store, hub.host, "dev-m")
    client = sas_client(hub, "dev-m", key)
    try:
        await asyncio.to_thread(client.connect)
        await asyncio.to_thread(client.send_message, json.dumps({"n": 1}))
        async with store.begin() as uow:
            assert [m.body for m in await uow.telemetry.list(hub.host)] == [b'{"n": 1}']
    finally:
        await shutdown(client)
        await hub.close()
