"""Connection limits: the cap (beyond `limits.max_connections` a CONNECT gets CONNACK 3, server
unavailable) and the MQTT keep-alive (a silent device is dropped after 1.5 x its keep-alive)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from iotdps.sas import make_sas_token
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e


def _connect(server: RunningServer, key: str) -> tuple[ssl.SSLSocket, int]:
    token = make_sas_token(server.id_scope, "cap-1", key, int(time.time()) + 600)
    tls, _, code = dps_connect(server, "cap-1", token)
    return tls, code


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


def _closed_after(tls: ssl.SSLSocket, limit: float, ping_every: float | None, session: object) -> float | None:
    """Seconds until the server closed `tls` (None if still open after `limit`), pinging meanwhile."""
    start = time.monotonic()
    tls.settimeout(0.1)
    next_ping = start + ping_every if ping_every else None
    while time.monotonic() - start < limit:
        if next_ping is not None and time.monotonic() >= next_ping:
            tls.sendall(session.ping())  # type: ignore[attr-defined]
            next_ping += ping_every  # type: ignore[operator]
        try:
            if tls.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return time.monotonic() - start
    return None


def test_keep_alive_drops_silent_devices_only(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        server.cli("enrollment", "create", "ka-1", "--symmetric-key")
        key = server.cli_json("enrollment", "show", "ka-1", "--show-keys")["attestation"]["symmetricKey"]["primaryKey"]
        token = make_sas_token(server.id_scope, "ka-1", key, int(time.time()) + 600)
        # Keep-alive 1 s: PINGREQ every 0.5 s keeps a connection open well past 1.5 s...
        talking, talking_session, code = dps_connect(server, "ka-1", token, keepalive=1)
        assert code == 0
        assert _closed_after(talking, 4, 0.5, talking_session) is None
        talking.close()
        # ...and a silent one is dropped 1.5 s after its last packet (the CONNECT), not before.
        silent, silent_session, code = dps_connect(server, "ka-1", token, keepalive=1)
        assert code == 0
        closed = _closed_after(silent, 6, None, silent_session)
        assert closed is not None and 1.0 <= closed < 4
        silent.close()
    finally:
        server.stop()
