"""The connection cap: beyond `limits.max_connections` a CONNECT gets CONNACK 3 (server unavailable)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import ssl
import time
import urllib.parse
from pathlib import Path

import pytest

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e


def _token(scope: str, registration_id: str, key: str) -> str:
    sr = urllib.parse.quote(f"{scope}/registrations/{registration_id}", safe="")
    expiry = int(time.time()) + 600
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig.decode(), safe='')}&se={expiry}"


def _connect(server: RunningServer, key: str) -> tuple[ssl.SSLSocket, int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    raw = socket.create_connection((server.address, 8883), timeout=10)
    tls = context.wrap_socket(raw, server_hostname=server.address)
    session = ClientSession()
    username = f"{server.id_scope}/registrations/cap-1/api-version=2019-03-31&ClientVersion=test"
    tls.sendall(session.connect("cap-1", username, _token(server.id_scope, "cap-1", key), keepalive=60))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = tls.recv(4096)
        if not data:
            break
        for event in session.receive_data(data):
            if isinstance(event, ConnAckReceived):
                return tls, event.return_code
    raise AssertionError("no CONNACK")


def test_connections_beyond_the_cap_get_connack_3(tmp_path: Path) -> None:
    server = start_server(tmp_path, config="[limits]\nmax_connections = 1\n")
    try:
        server.cli("enrollment", "create", "cap-1", "--symmetric-key")
        key = server.cli_json("enrollment", "show", "cap-1", "--show-keys")["attestation"]["symmetricKey"]["primaryKey"]
        first, code = _connect(server, key)
        assert code == 0
        second, code = _connect(server, key)
        assert code == 3
        second.close()
        first.close()
        # Once the first connection is gone there is room again.
        deadline = time.monotonic() + 10
        while True:
            third, code = _connect(server, key)
            third.close()
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 0
        assert "connection limit 1 reached" in server.log()
    finally:
        assert server.stop() == 0
