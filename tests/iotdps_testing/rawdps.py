"""A DPS MQTT connection made by hand with our sans-IO client session, for what the Azure SDK
will not do (send an expired token, hold a connection open, stop mid-registration)."""

from __future__ import annotations

import socket
import ssl
import time

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps_testing.server import RunningServer

__all__ = ["DpsConnection", "dps_connect"]

DpsConnection = tuple[ssl.SSLSocket, ClientSession, int]


def dps_connect(
    server: RunningServer, registration_id: str, token: str, *, timeout: float = 10.0, keepalive: int = 60
) -> DpsConnection:
    """TLS to the server's 8883, CONNECT as `registration_id` with the SAS `token`; returns the
    socket (the caller closes it), the session and the CONNACK return code."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    raw = socket.create_connection((server.address, 8883), timeout=timeout)
    tls = context.wrap_socket(raw, server_hostname=server.address)
    session = ClientSession()
    username = f"{server.id_scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=test"
    tls.sendall(session.connect(registration_id, username, token, keepalive=keepalive, clean_session=False))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = tls.recv(4096)
        if not data:
            break
        for event in session.receive_data(data):
            if isinstance(event, ConnAckReceived):
                return tls, session, event.return_code
    tls.close()
    raise AssertionError("no CONNACK")
