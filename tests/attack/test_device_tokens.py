"""Device credentials an attacker could stretch: SAS token lifetime and registration-id case.

Lifetime: a token is a bearer credential until `se`; one valid until year 9999 is a leaked key in
all but name. Both the DPS and the hub refuse a token valid further ahead than the configured
maximum, while the SDK's own tokens (azure-iot-device 2.14.0: `sastoken_ttl` 3600 s for DPS and
hub alike) pass under the default.

Real parts: `iotdps up` in a subprocess, the official SDK, raw MQTT over TLS for the tokens the
SDK would never send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient

from iotdps.attestation.symmetric_key import make_sas_token
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
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
