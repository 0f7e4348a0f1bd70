"""Device credentials an attacker could stretch: SAS token lifetime and registration-id case.

Lifetime: a token is a bearer credential until `se`; one valid until year 9999 is a leaked key in
all but name. Both the DPS and the hub refuse a token valid further ahead than the configured
maximum, while the SDK's own tokens (azure-iot-device 2.14.0: `sastoken_ttl` 3600 s for DPS and
hub alike) pass under the default.

Real parts: `iotdps up` in a subprocess, the official SDK, raw MQTT over TLS for the tokens the
SDK would never send.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps.sas import make_sas_token
from iotdps_testing.devcerts import derived_key
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

YEAR_9999 = 253402300799  # 9999-12-31T23:59:59Z
CONNACK_NOT_AUTHORIZED = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tokens"))
    yield running
    assert running.stop() == 0, running.log()


def _hub_token(hub: str, device_id: str, key: str, expiry: int) -> str:
    """A hub device token as the SDK builds it: sr = quote(`hub/devices/id`), no skn."""
    sr = quote(f"{hub}/devices/{device_id}", safe="")
    digest = hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    return f"SharedAccessSignature sr={sr}&sig={quote(base64.b64encode(digest).decode(), safe='')}&se={expiry}"


def _hub_connack(server: RunningServer, device_id: str, token: str) -> int:
    """CONNECT to the hub (it shares the DPS address and host name) as `device_id`; the CONNACK code."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    with socket.create_connection((server.address, 8883), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server.address) as tls:
            session = ClientSession()
            username = f"{server.address}/{device_id}/?api-version=2021-04-12"
            tls.sendall(session.connect(device_id, username, token, clean_session=True))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                data = tls.recv(4096)
                if not data:
                    break
                for event in session.receive_data(data):
                    if isinstance(event, ConnAckReceived):
                        return event.return_code
    raise AssertionError("no CONNACK from the hub")


def _provision_with_sdk(server: RunningServer, registration_id: str, key: str) -> str:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
    )
    result = client.register()
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == server.address
    return str(result.registration_state.device_id)


# --------------------------------------------------------------------------- token lifetime


def test_sdk_default_tokens_pass_and_a_year_9999_token_does_not(server: RunningServer) -> None:
    server.cli("enrollment", "create", "tok-life-1", "--symmetric-key")
    key, _ = server.symmetric_keys("enrollment", "tok-life-1")

    # The SDK as shipped (its tokens live 3600 s) provisions and connects to the hub.
    device_id = _provision_with_sdk(server, "tok-life-1", key)
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=server.address, device_id=device_id, server_verification_cert=server.server_ca
    )
    try:
        client.connect()
        client.send_message("within the lifetime")
    finally:
        client.shutdown()

    # DPS: a correctly signed token valid until 9999 is refused at CONNECT, with the reason kept.
    forever = make_sas_token(server.id_scope, "tok-life-1", key, YEAR_9999)
    tls, _, code = dps_connect(server, "tok-life-1", forever)
    tls.close()
    assert code == CONNACK_NOT_AUTHORIZED
    refusal = server.refusals("tok-life-1")[0]
    assert refusal.reason == "SAS_LIFETIME_TOO_LONG"
    assert "too far ahead" in refusal.message

    # The hub: the same for a device token.
    assert _hub_connack(server, device_id, _hub_token(server.address, device_id, key, YEAR_9999)) == (
        CONNACK_NOT_AUTHORIZED
    )
    assert "too far ahead" in server.log()
    # ... while an ordinary one-hour token on the same raw path is accepted (the refusal above
    # is about the lifetime, nothing else).
    assert _hub_connack(server, device_id, _hub_token(server.address, device_id, key, int(time.time()) + 3600)) == 0


def test_configured_maximum_applies_to_dps_and_hub(tmp_path: Path) -> None:
    # Configured through the environment; the TOML key is [auth] device_token_max_lifetime.
    server = start_server(tmp_path, env={"IOTDPS_DEVICE_TOKEN_MAX_LIFETIME": "7200"})
    try:
        server.cli("enrollment", "create", "tok-cap-1", "--symmetric-key")
        key, _ = server.symmetric_keys("enrollment", "tok-cap-1")
        now = int(time.time())
        tls, _, code = dps_connect(server, "tok-cap-1", make_sas_token(server.id_scope, "tok-cap-1", key, now + 9000))
        tls.close()
        assert code == CONNACK_NOT_AUTHORIZED
        device_id = _provision_with_sdk(server, "tok-cap-1", key)
        assert _hub_connack(server, device_id, _hub_token(server.address, device_id, key, now + 9000)) == (
            CONNACK_NOT_AUTHORIZED
        )
        assert _hub_connack(server, device_id, _hub_token(server.address, device_id, key, now + 7000)) == 0
    finally:
        assert server.stop() == 0, server.log()


# --------------------------------------------------------------------------- registration-id case
#
# DPS registration ids are case-insensitive ("a case-insensitive string", REST spec): `GDEV-1`
# and `gdev-1` are one registration, found by one individual enrollment. Case-sensitive lookups
# made them two devices on the hub, and let a group key holder step around a (disabled)
# individual enrollment by changing case.

PASSPHRASE = "factory-passphrase-for-attack-tests"


def _hub_devices(server: RunningServer, hub: str) -> list[str]:
    from iotdps.store import open_store

    async def read() -> list[str]:
        store = await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                page = await uow.devices.list(hub, page_size=1000)
                return [d.device_id for d in page.items]
        finally:
            await store.close()

    return asyncio.run(read())


def _sas_register(server: RunningServer, registration_id: str, key: str) -> Any:
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
    ).register()


def test_group_device_under_two_spellings_is_one_registration(server: RunningServer) -> None:
    server.cli("group", "create", "case-group", "--symmetric-key")
    group_key, _ = server.symmetric_keys("group", "case-group")
    first = _sas_register(server, "GDEV-1", derived_key(group_key, "GDEV-1"))
    assert (first.status, first.registration_state.device_id) == ("assigned", "GDEV-1")
    # The same device id in lower case (its key derived from that spelling, as the SDK does).
    lower_key = derived_key(group_key, "gdev-1")
    second = _sas_register(server, "gdev-1", lower_key)
    assert second.status == "assigned"
    assert second.registration_state.device_id == "GDEV-1"  # the same hub identity
    assert second.registration_state.sub_status == "reprovisionedToInitialAssignment"
    assert second.registration_state.created_date_time == first.registration_state.created_date_time
    record = server.registration("gDeV-1")
    assert record is not None and record.operation_id == second.operation_id
    assert [d for d in _hub_devices(server, server.address) if d.lower() == "gdev-1"] == ["GDEV-1"]
    # The device connects to its hub as the device id it was given, with its current key.
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=lower_key, hostname=server.address, device_id="GDEV-1", server_verification_cert=server.server_ca
    )
    try:
        client.connect()
        client.send_message("one device")
    finally:
        client.shutdown()


def test_case_cannot_step_around_an_individual_enrollment(server: RunningServer) -> None:
    server.cli("group", "create", "open-group", "--symmetric-key")
    group_key, _ = server.symmetric_keys("group", "open-group")
    server.cli("enrollment", "create", "BLOCKED-7", "--symmetric-key", "--disabled")
    for spelling in ("BLOCKED-7", "blocked-7", "Blocked-7"):
        # A group key holder derives a key for any spelling; the individual enrollment decides.
        with pytest.raises((ClientError, CredentialError)):
            _sas_register(server, spelling, derived_key(group_key, spelling))
        assert server.refusals(spelling)[0].enrollment == "individual:BLOCKED-7"
    assert not [d for d in _hub_devices(server, server.address) if d.lower() == "blocked-7"]


def test_x509_cn_and_registration_id_compare_without_case(server: RunningServer, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    server.env.update({"IOTDPS_CA_DIR": str(ca_dir), "IOTDPS_CA_PASSPHRASE": PASSPHRASE})
    server.cli("create-ca-root", "--name", "case-root")
    server.cli("ca", "upload", "case-root", str(ca_dir / "case-root.cert.pem"), "--verified")
    server.cli("group", "create", "case-x509", "--ca-ref", "case-root")
    out = ca_dir / "devices"
    server.cli("create-device-cert", "--registration-id", "XDEV-1", "--ca", "case-root", "--out", str(out))
    cert = X509(str(out / "XDEV-1.cert.pem"), str(out / "XDEV-1.key.pem"))
    results = []
    for spelling in ("xdev-1", "XDEV-1"):
        results.append(
            ProvisioningDeviceClient.create_from_x509_certificate(
                provisioning_host=server.address,
                registration_id=spelling,
                id_scope=server.id_scope,
                x509=cert,
                server_verification_cert=server.server_ca,
            ).register()
        )
    assert [r.status for r in results] == ["assigned", "assigned"]
    # The hub identity is named by the CN as written: the hub compares the two exactly.
    assert [r.registration_state.device_id for r in results] == ["XDEV-1", "XDEV-1"]
    assert [d for d in _hub_devices(server, server.address) if d.lower() == "xdev-1"] == ["XDEV-1"]
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=cert, hostname=server.address, device_id="XDEV-1", server_verification_cert=server.server_ca
    )
    try:
        client.connect()
        client.send_message("one certificate, one device")
    finally:
        client.shutdown()
