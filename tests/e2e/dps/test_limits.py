"""The connection cap: beyond `limits.max_connections` a CONNECT gets CONNACK 3 (server unavailable)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from iotdps.attestation.symmetric_key import make_sas_token
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
