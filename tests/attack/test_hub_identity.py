"""Identity properties a device may not set on its own messages.

IoT Hub stamps the sending connection's identity on every device-to-cloud message
(iothub-connection-device-id, -module-id, -auth-method, -auth-generation-id, the enqueued time;
`$.cdid` and `$.cmid` on the MQTT wire). A device that could set them could pass its telemetry
off as another device's to whoever reads it. Here a provisioned device tries, with the official
SDK and with a raw MQTT client over TLS, against a real `iotdps up`; the stored messages must
carry the hub's values only.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient

from iotdps.device.credentials import make_hub_sas_token
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived, PubAckReceived
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

VICTIM = "victim-device"
# What a device puts in its property bag to look like VICTIM, as the wire and the long names.
FORGED = {
    "$.cdid": VICTIM,
    "$.cmid": "victim-module",
    "iothub-connection-device-id": VICTIM,
    "iothub-connection-module-id": "victim-module",
    "iothub-connection-auth-method": '{"scope":"hub","type":"sas","issuer":"iothub"}',
    "iothub-connection-auth-generation-id": "1",
    "iothub-enqueuedtime": "2000-01-01T00:00:00Z",
}


def _provision(server: RunningServer, registration_id: str) -> tuple[str, str, str]:
    """Enroll and provision a symmetric-key device; (hub, device id, key)."""
    server.cli("enrollment", "create", registration_id, "--symmetric-key")
    key, _ = server.symmetric_keys("enrollment", registration_id)
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
    )
    result = client.register()
    assert result.status == "assigned", server.log()
    return result.registration_state.assigned_hub, result.registration_state.device_id, key


def _raw_publish(server: RunningServer, hub: str, device_id: str, key: str, bag: str) -> None:
    """CONNECT with the device's SAS over TLS and PUBLISH one QoS 1 message with `bag` exactly
    as given (already percent-encoded); returns once the hub has PUBACKed it (stored)."""
    context = ssl.create_default_context(cadata=server.server_ca)
    with (
        socket.create_connection((hub, 8883), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hub) as tls,
    ):
        session = ClientSession()
        token = make_hub_sas_token(hub, device_id, key, int(time.time()) + 600)
        tls.sendall(session.connect(device_id, f"{hub}/{device_id}/?api-version=2021-04-12", token, keepalive=60))
        packet_id: int | None = None
        acked = False
        deadline = time.monotonic() + 10
        while not acked and time.monotonic() < deadline:
            chunk = tls.recv(4096)
            assert chunk, "the hub closed the connection"
            for event in session.receive_data(chunk):
                if isinstance(event, ConnAckReceived):
                    assert event.return_code == 0
                    packet_id, data = session.publish(f"devices/{device_id}/messages/events/{bag}", b"raw", qos=1)
                    tls.sendall(data)
                elif isinstance(event, PubAckReceived) and event.packet_id == packet_id:
                    acked = True
        assert acked


def _stored(server: RunningServer, hub: str, device_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        out = server.cli("telemetry", "tail", "--hub", hub, "--device", device_id, "--no-follow", "--limit", "10")
        messages = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.2)


def test_a_device_cannot_set_the_hubs_identity_properties(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        hub, device_id, key = _provision(server, "spoofer-1")
        client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=hub, device_id=device_id, server_verification_cert=server.server_ca
        )
        client.connect()
        try:
            message = Message("sdk")
            message.custom_properties = {**FORGED, "reading": "42"}
            client.send_message(message)
        finally:
            client.shutdown()
        # The wire form exactly, with `$` percent-encoded as the SDK writes it and a long name
        # in another letter case.
        _raw_publish(
            server,
            hub,
            device_id,
            key,
            "%24.cdid=victim-device&%24.cmid=victim-module&IoTHub-Connection-Device-Id=victim-device&reading=7",
        )

        messages = _stored(server, hub, device_id, 2)
        assert sorted(m["body"] for m in messages) == ["raw", "sdk"]
        for m in messages:
            system, application = m["systemProperties"], m["properties"]
            assert m["deviceId"] == device_id
            # Nothing the device forged survived, under any name, in either bag.
            everything = json.dumps([system, application])
            assert VICTIM not in everything and "victim-module" not in everything, m
            assert not {k.lower() for k in application} & {k.lower() for k in FORGED}, application
            # The hub's own stamp: the connection's device and how it authenticated.
            assert system["connection_device_id"] == device_id
            assert json.loads(system["connection_auth_method"])["type"] == "sas"
            assert system["connection_auth_generation_id"] != "1"
            assert "connection_module_id" not in system  # no module connected
            assert application["reading"] in ("42", "7")  # ordinary properties are kept
    finally:
        server.stop()
