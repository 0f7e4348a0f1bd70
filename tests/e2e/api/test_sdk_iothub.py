"""The hub service API with the official `azure-iot-hub` 2.7.0 SDK against a real `iotdps up`.

The server runs two hubs, each on its own loopback address (host name = address); the SDK's
connection string names one hub by `HostName=<hub>:8443`, and the management port is served
on every hub address. Devices are the official `azure-iot-device` 2.14.0 IoTHubDeviceClient.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.device import X509, IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from msrest.exceptions import HttpOperationError

from iotdps.access import make_service_sas
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MGMT_PORT = 8443
_PORTS = (8883, 443, MGMT_PORT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("iothub")
    hubs = [free_loopback_address(_PORTS) for _ in range(2)]
    config = "".join(f'[[hubs]]\nhost_name = "{h}"\nbind = "{h}"\n' for h in hubs)
    srv = start_server(tmp, config=config, address=free_loopback_address(_PORTS))
    srv.env["HUBS"] = ",".join(hubs)
    try:
        yield srv
    finally:
        srv.stop()


def _hubs(server: RunningServer) -> list[str]:
    return server.env["HUBS"].split(",")


def _key(server: RunningServer, policy: str) -> str:
    doc = json.loads((server.data_dir / "access-policies.json").read_text())
    return next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy)


def _registry(server: RunningServer, hub: str, policy: str = "iothubowner") -> IoTHubRegistryManager:
    cs = f"HostName={hub}:{MGMT_PORT};SharedAccessKeyName={policy};SharedAccessKey={_key(server, policy)}"
    manager = IoTHubRegistryManager.from_connection_string(cs)
    # msrest hands requests verify=True; point it at our server CA (REQUESTS_CA_BUNDLE works too).
    manager.protocol.config.connection.verify = str(server.server_ca_path)
    return manager


def _status(exc: HttpOperationError) -> int:
    return int(exc.response.status_code)


def _new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _self_signed(device_id: str, directory: Path) -> tuple[X509, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{device_id}.pem", directory / f"{device_id}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return X509(str(cert_file), str(key_file)), cert.fingerprint(hashes.SHA256()).hex().upper()


def test_devices_create_get_update_delete(server: RunningServer) -> None:
    hub_a, hub_b = _hubs(server)
    registry = _registry(server, hub_a)
    primary, secondary = _new_key(), _new_key()
    created = registry.create_device_with_sas("sdk-sas-1", primary, secondary, "enabled")
    assert created.device_id == "sdk-sas-1" and created.status == "enabled" and created.etag
    assert created.authentication.type == "sas"
    assert created.authentication.symmetric_key.primary_key == primary

    # Creating it again is IoT Hub's 409 DeviceAlreadyExists.
    with pytest.raises(HttpOperationError) as exists:
        registry.create_device_with_sas("sdk-sas-1", primary, secondary, "enabled")
    assert _status(exists.value) == 409

    thumb = "AB" * 32
    x509_dev = registry.create_device_with_x509("sdk-x509-1", thumb, None, "enabled")
    assert x509_dev.authentication.type == "selfSigned"
    assert x509_dev.authentication.x509_thumbprint.primary_thumbprint == thumb

    got = registry.get_device("sdk-sas-1")
    assert got.etag == created.etag and got.connection_state == "Disconnected"
    updated = registry.update_device_with_sas("sdk-sas-1", got.etag, primary, secondary, "disabled")
    assert updated.status == "disabled" and updated.etag != got.etag
    # The old etag no longer matches: 412.
    with pytest.raises(HttpOperationError) as stale:
        registry.update_device_with_sas("sdk-sas-1", got.etag, primary, secondary, "enabled")
    assert _status(stale.value) == 412
    assert registry.get_device("sdk-sas-1").status == "disabled"

    ids = {d.device_id for d in registry.get_devices()}
    assert {"sdk-sas-1", "sdk-x509-1"} <= ids
    # The other hub has its own registry: the same SDK pointed at hub B sees none of them.
    other = _registry(server, hub_b)
    with pytest.raises(HttpOperationError) as elsewhere:
        other.get_device("sdk-sas-1")
    assert _status(elsewhere.value) == 404

    registry.delete_device("sdk-sas-1")
    registry.delete_device("sdk-x509-1", etag=x509_dev.etag)
    with pytest.raises(HttpOperationError) as gone:
        registry.get_device("sdk-sas-1")
    assert _status(gone.value) == 404


def test_a_token_for_one_hub_is_refused_by_another(server: RunningServer) -> None:
    hub_a, hub_b = _hubs(server)
    token = make_service_sas(f"{hub_a}:{MGMT_PORT}", "iothubowner", _key(server, "iothubowner"))
    answer = requests.get(
        f"https://{hub_b}:{MGMT_PORT}/devices",
        headers={"Authorization": token},
        verify=str(server.server_ca_path),
        timeout=30,
    )
    assert answer.status_code == 401
    # And a DPS policy grants nothing on a hub.
    dps = make_service_sas(f"{hub_b}:{MGMT_PORT}", "provisioningserviceowner", _key(server, "provisioningserviceowner"))
    refused = requests.get(
        f"https://{hub_b}:{MGMT_PORT}/devices",
        headers={"Authorization": dps},
        verify=str(server.server_ca_path),
        timeout=30,
    )
    assert refused.status_code == 401 and "RegistryRead" in refused.json()["message"]


def test_twin_patch_reaches_the_connected_device_and_methods_round_trip(server: RunningServer) -> None:
    hub = _hubs(server)[1]
    registry = _registry(server, hub)
    key = _new_key()
    registry.create_device_with_sas("sdk-twin-1", key, _new_key(), "enabled")
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id="sdk-twin-1", server_verification_cert=server.server_ca
    )
    patches: list[dict[str, Any]] = []
    got_patch = threading.Event()

    def on_patch(patch: dict[str, Any]) -> None:
        patches.append(patch)
        if "interval" in patch:
            got_patch.set()

    def on_method(request: Any) -> None:
        answer = {"echo": request.payload, "name": request.name}
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, answer))

    client.on_twin_desired_properties_patch_received = on_patch
    client.on_method_request_received = on_method
    client.connect()
    try:
        twin = registry.get_twin("sdk-twin-1")
        assert twin.connection_state == "Connected" and twin.properties.desired["$version"] == 1
        patch = Twin(tags={"site": "plant-7"}, properties=TwinProperties(desired={"interval": 5}))
        changed = registry.update_twin("sdk-twin-1", patch, twin.etag)
        assert changed.tags == {"site": "plant-7"} and changed.properties.desired["interval"] == 5
        assert changed.etag != twin.etag
        assert got_patch.wait(20), "the device did not receive the desired patch"
        assert patches[-1]["interval"] == 5 and patches[-1]["$version"] == 2
        # The device sees the same twin.
        assert client.get_twin()["desired"]["interval"] == 5
        # The stale twin etag is refused.
        with pytest.raises(HttpOperationError) as stale:
            registry.update_twin("sdk-twin-1", Twin(tags={"site": "x"}), twin.etag)
        assert _status(stale.value) == 412

        started = time.monotonic()
        result = registry.invoke_device_method(
            "sdk-twin-1",
            CloudToDeviceMethod(method_name="reboot", payload={"delay": 3}, response_timeout_in_seconds=20),
        )
        assert result.status == 201 and result.payload == {"echo": {"delay": 3}, "name": "reboot"}
        assert time.monotonic() - started < 20
    finally:
        client.shutdown()
    # Offline now: IoT Hub's 404 DeviceNotOnline.
    deadline = time.monotonic() + 10
    while registry.get_device("sdk-twin-1").connection_state == "Connected" and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(HttpOperationError) as offline:
        registry.invoke_device_method("sdk-twin-1", CloudToDeviceMethod(method_name="reboot", payload=None))
    assert _status(offline.value) == 404
    assert json.loads(offline.value.response.text)["errorCode"] == 404103


def test_x509_device_connects_and_a_method_times_out(server: RunningServer, tmp_path: Path) -> None:
    hub = _hubs(server)[0]
    registry = _registry(server, hub)
    cert, thumb = _self_signed("sdk-x509-2", tmp_path)
    registry.create_device_with_x509("sdk-x509-2", thumb, None, "enabled")
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=cert, hostname=hub, device_id="sdk-x509-2", server_verification_cert=server.server_ca
    )
    client.on_method_request_received = lambda request: None  # subscribed, never answers
    client.connect()
    try:
        client.send_message("hello from x509")
        with pytest.raises(HttpOperationError) as late:
            registry.invoke_device_method(
                "sdk-x509-2", CloudToDeviceMethod(method_name="slow", payload="", response_timeout_in_seconds=1)
            )
        assert _status(late.value) == 504
        assert json.loads(late.value.response.text)["errorCode"] == 504101
    finally:
        client.shutdown()


def test_c2d_over_rest_and_telemetry_read_back(server: RunningServer) -> None:
    hub = _hubs(server)[0]
    registry = _registry(server, hub)
    key = _new_key()
    registry.create_device_with_sas("sdk-c2d-1", key, _new_key(), "enabled")
    token = make_service_sas(f"{hub}:{MGMT_PORT}", "iothubowner", _key(server, "iothubowner"))
    base = f"https://{hub}:{MGMT_PORT}/devices/sdk-c2d-1/messages"
    ca = str(server.server_ca_path)
    sent = requests.post(
        f"{base}/deviceBound",
        json={"body": "open valve", "properties": {"valve": "3"}, "messageId": "m-1"},
        headers={"Authorization": token},
        verify=ca,
        timeout=30,
    )
    assert sent.status_code == 202 and sent.json() == {"messageId": "m-1"}
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id="sdk-c2d-1", server_verification_cert=server.server_ca
    )
    received: list[Any] = []
    arrived = threading.Event()
    client.on_message_received = lambda message: (received.append(message), arrived.set())
    client.connect()
    try:
        assert arrived.wait(20), "the queued cloud-to-device message was not delivered"
        message = received[0]
        assert message.data == b"open valve"
        assert message.custom_properties == {"valve": "3"} and message.message_id == "m-1"
        client.send_message("closed")
    finally:
        client.shutdown()
    deadline = time.monotonic() + 15
    events: list[Any] = []
    while time.monotonic() < deadline and not events:
        answer = requests.get(f"{base}/events?limit=5", headers={"Authorization": token}, verify=ca, timeout=30)
        assert answer.status_code == 200
        events = answer.json()
        time.sleep(0.2)
    assert [e["body"] for e in events] == ["closed"]


def test_statistics_with_the_sdk(server: RunningServer) -> None:
    hub = _hubs(server)[1]
    registry = _registry(server, hub)
    before = registry.get_device_registry_statistics()
    key = _new_key()
    registry.create_device_with_sas("sdk-stat-1", key, _new_key(), "enabled")
    registry.create_device_with_sas("sdk-stat-2", _new_key(), _new_key(), "disabled")
    after = registry.get_device_registry_statistics()
    assert after.total_device_count == before.total_device_count + 2
    assert after.enabled_device_count == before.enabled_device_count + 1
    assert after.disabled_device_count == before.disabled_device_count + 1
    assert registry.get_service_statistics().connected_device_count == 0
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id="sdk-stat-1", server_verification_cert=server.server_ca
    )
    client.connect()
    try:
        assert registry.get_service_statistics().connected_device_count == 1
        # The other hub's numbers are its own.
        assert _registry(server, _hubs(server)[0]).get_service_statistics().connected_device_count == 0
    finally:
        client.shutdown()


def _sse_events(lines: Iterator[str], wanted: int, deadline: float) -> list[dict[str, Any]]:
    """Parse server-sent events until `wanted` telemetry events arrived (or the deadline)."""
    events: list[dict[str, Any]] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if current.get("event") == "telemetry":
                events.append({"id": current.get("id"), **json.loads(current["data"])})
            current = {}
            if len(events) >= wanted or time.monotonic() > deadline:
                break
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value
    return events


def test_live_telemetry_stream_with_the_hub_named_by_header(server: RunningServer) -> None:
    hub, other = _hubs(server)
    registry = _registry(server, hub)
    key = _new_key()
    registry.create_device_with_sas("sdk-live-1", key, _new_key(), "enabled")
    token = make_service_sas(f"{hub}:{MGMT_PORT}", "iothubowner", _key(server, "iothubowner"))
    ca = str(server.server_ca_path)
    # Reached on the DPS address: the header names the hub, and the token must name it too.
    url = f"https://{server.address}:{MGMT_PORT}/devices/sdk-live-1/messages/events/stream?timeout=20"
    wrong = requests.get(url, headers={"Authorization": token, "x-iotdps-hub": other}, verify=ca, timeout=30)
    assert wrong.status_code == 401
    nohub = {"Authorization": token, "x-iotdps-hub": "nohub.example"}
    unknown = requests.get(url, headers=nohub, verify=ca, timeout=30)
    assert unknown.status_code == 404
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id="sdk-live-1", server_verification_cert=server.server_ca
    )
    client.connect()
    try:
        client.send_message("before the stream")  # not shown: a stream starts from now
        time.sleep(1.0)
        with requests.get(
            url, headers={"Authorization": token, "x-iotdps-hub": hub}, verify=ca, timeout=30, stream=True
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            lines = stream.iter_lines(decode_unicode=True)
            sender = threading.Timer(0.5, lambda: [client.send_message(f"live {n}") for n in range(2)])
            sender.start()
            events = _sse_events(lines, 2, time.monotonic() + 15)
            sender.join()
    finally:
        client.shutdown()
    assert [e["body"] for e in events] == ["live 0", "live 1"]
    assert [int(e["id"]) for e in events] == [e["sequenceNumber"] for e in events]


def test_status_counts_and_hubs_served(server: RunningServer) -> None:
    token = make_service_sas(f"{server.address}:{MGMT_PORT}", "enrollmentread", _key(server, "enrollmentread"))
    answer = requests.get(
        f"https://{server.address}:{MGMT_PORT}/status",
        headers={"Authorization": token},
        verify=str(server.server_ca_path),
        timeout=30,
    )
    assert answer.status_code == 200
    status = answer.json()
    assert status["idScope"] == server.id_scope
    assert status["deviceProvisioningHostName"] == server.address
    assert any(e.startswith(f"mqtts://{server.address}:8883") for e in status["endpoints"])
    assert {h["hostName"]: h["served"] for h in status["linkedHubs"]} == {h: True for h in _hubs(server)}
    assert len(status["perMinute"]["assignments"]) == len(status["perMinute"]["refusals"]) == 60
    assert status["enrollments"] >= 0 and isinstance(status["registrations"], dict)
