"""A flood of refusals cannot erase the ones an operator needs, nor flood the log.

The attack (reproduced by hand on main): thousands of refused registrations with made-up ids
filled the bounded refusal history and pushed out every real refusal, a forged-certificate
attempt among them, while writing one log line each. Here a real `iotdps up` with a small
history (300 entries) first refuses a forged certificate for an enrolled device, then gets a
bounded flood over real TLS from the same address: a few thousand registrations with distinct
made-up ids over HTTPS keep-alive connections, plus refused MQTT CONNECTs.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from iotdps.access import make_service_sas
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps.sas import make_sas_token
from iotdps_testing.devcerts import self_signed_device
from iotdps_testing.hubkit import new_key
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

HISTORY = 300  # the server's refusal_history for this test
HTTP_FLOOD = 2400  # distinct made-up registration ids over HTTPS
MQTT_FLOOD = 60  # refused CONNECTs, one TLS connection each
REPEATS = 40  # one made-up id again and again: one entry with a count


def _api_refusals(server: RunningServer) -> list[dict[str, Any]]:
    """The operator's view: GET /refusals on the management API (owner policy)."""
    policies = json.loads((server.data_dir / "access-policies.json").read_text())["policies"]
    key = next(p["primaryKey"] for p in policies if p["keyName"] == "provisioningserviceowner")
    token = make_service_sas(f"{server.address}:8443", "provisioningserviceowner", key)
    answer = requests.get(
        f"https://{server.address}:8443/refusals?limit=1000",
        headers={"Authorization": token},
        verify=str(server.server_ca_path),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    entries: list[dict[str, Any]] = answer.json()
    return entries


def _stored_rows(server: RunningServer) -> int:
    with sqlite3.connect(server.data_dir / "iotdps.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM refusals").fetchone()
    return int(count)


def _forged_connect(server: RunningServer, cert_file: Path, key_file: Path, registration_id: str) -> int:
    """CONNECT over TLS presenting the client certificate; the CONNACK return code."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((server.address, 8883), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server.address) as tls,
    ):
        session = ClientSession()
        username = f"{server.id_scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion=test"
        tls.sendall(session.connect(registration_id, username, None, keepalive=60))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = tls.recv(4096)
            assert data, "closed before CONNACK"
            for event in session.receive_data(data):
                if isinstance(event, ConnAckReceived):
                    return event.return_code
    raise AssertionError("no CONNACK")


def _http_flood(server: RunningServer, ids: list[str]) -> set[int]:
    """PUT a register for every id (a made-up SAS token each) over one keep-alive TLS
    connection; the status codes seen."""
    context = ssl.create_default_context(cadata=server.server_ca)
    conn = http.client.HTTPSConnection(server.address, 443, context=context, timeout=30)
    statuses: set[int] = set()
    try:
        for registration_id in ids:
            token = make_sas_token(server.id_scope, registration_id, new_key(), int(time.time()) + 600)
            body = json.dumps({"registrationId": registration_id})
            conn.request(
                "PUT",
                f"/{server.id_scope}/registrations/{registration_id}/register?api-version=2021-06-01",
                body=body,
                headers={"Authorization": token, "Content-Type": "application/json"},
            )
            answer = conn.getresponse()
            answer.read()
            statuses.add(answer.status)
    finally:
        conn.close()
    return statuses


def test_a_refusal_flood_keeps_the_forged_certificate_refusal_and_a_bounded_log(tmp_path: Path) -> None:
    server = start_server(tmp_path, config=f"[limits]\nrefusal_history = {HISTORY}\n")
    try:
        # The victim's enrollment, then someone presenting a certificate of its name and
        # another key.
        victim = self_signed_device(tmp_path, "victim-1")
        server.cli("enrollment", "create", "victim-1", "--cert", str(victim.cert_file))
        forger_dir = tmp_path / "forger"
        forger_dir.mkdir()
        forged = self_signed_device(forger_dir, "victim-1")
        assert _forged_connect(server, forged.cert_file, forged.key_file, "victim-1") == 5
        (forged_entry,) = server.refusals("victim-1")

        started = time.monotonic()
        statuses: set[int] = set()
        for part in range(4):  # four keep-alive connections, one after the other
            ids = [f"junk-{part}-{n}" for n in range(HTTP_FLOOD // 4)]
            statuses |= _http_flood(server, ids)
        statuses |= _http_flood(server, ["repeat-1"] * REPEATS)
        assert statuses and all(400 <= s < 500 for s in statuses), statuses
        for n in range(MQTT_FLOOD):
            tls, _, code = dps_connect(server, f"junk-mqtt-{n}", "SharedAccessSignature sr=x&sig=y&se=1")
            tls.close()
            assert code == 5
        elapsed = time.monotonic() - started

        entries = _api_refusals(server)
        # Bounded (the table is pruned every 100 attempts; what is shown, exactly), and the
        # forged-certificate attempt is still there as it was.
        assert len(entries) == HISTORY
        assert _stored_rows(server) < HISTORY + 100
        (kept,) = [e for e in entries if e["registrationId"] == "victim-1"]
        assert (kept["reason"], kept["message"], kept["count"]) == (forged_entry.reason, forged_entry.message, 1)
        assert kept["peerAddress"] == forged_entry.peer and kept["peerAddress"]
        assert kept["firstSeenUtc"] == kept["lastSeenUtc"] == kept["timestampUtc"]
        assert forged_entry.reason not in {e["reason"] for e in entries if e["registrationId"].startswith("junk-")}
        # Repeats are one entry with their count, first and last seen.
        (repeated,) = [e for e in entries if e["registrationId"] == "repeat-1"]
        assert repeated["count"] == REPEATS and repeated["firstSeenUtc"] <= repeated["lastSeenUtc"]
    finally:
        assert server.stop() == 0

    # The log: refusals one by one up to 10 a second, the rest counted in one line a second.
    log = server.log().splitlines()
    one_by_one = [line for line in log if re.search(r"(registration|CONNECT) \S+ from \S+ refused", line)]
    summaries = [re.search(r"(\d+) more refusals \(logged one by one", line) for line in log]
    suppressed = sum(int(m.group(1)) for m in summaries if m)
    attempts = 1 + HTTP_FLOOD + REPEATS + MQTT_FLOOD
    assert len(one_by_one) + suppressed == attempts, (len(one_by_one), suppressed)
    windows = elapsed + 2  # a window starts at the first line after the previous one ended
    assert len(one_by_one) <= 10 * windows, (len(one_by_one), elapsed)
    assert suppressed >= attempts - 10 * windows
    assert len(log) < 200 + 12 * windows, len(log)
