"""Operating a real `iotdps up`: /healthz and /readyz on the management port, /metrics on a port
of its own (and the same page on the management port) scraped with the bearer token while the
official device SDK provisions, and `--log-format json` (one object per line, the same events
as the text format).

Real parts: `iotdps up` in a subprocess on its own loopback address (SQLite), TLS on loopback,
azure-iot-device 2.14.0 registering with a symmetric key, the wrong key, and a TLS client that
gives up half-way (a handshake failure).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.iot.device import ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

HUB = "hub-ops.iotdps.test"
METRICS_PORT = 9464


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from iotdps_testing.net import free_loopback_address

    address = free_loopback_address()
    running = start_server(
        tmp_path_factory.mktemp("ops"),
        address=address,
        config=f'[metrics]\nport = {METRICS_PORT}\n[[hubs]]\nhost_name = "{HUB}"\nbind = "{address}"\n',
        extra_args=["--log-format", "json"],
    )
    yield running
    assert running.stop() == 0, running.log()


def _get(server: RunningServer, path: str) -> requests.Response:
    return requests.get(f"https://{server.address}:8443{path}", verify=str(server.server_ca_path), timeout=30)


def _scrape(server: RunningServer, port: int = METRICS_PORT) -> requests.Response:
    """/metrics as Prometheus scrapes it: the bearer token from the file `iotdps up` made."""
    token = (server.data_dir / "metrics-token").read_text().strip()
    return requests.get(
        f"https://{server.address}:{port}/metrics",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(server.server_ca_path),
        timeout=30,
    )


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value, from the text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _sas_client(server: RunningServer, registration_id: str, key: str) -> ProvisioningDeviceClient:
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
    )


def test_probes_answer_without_credentials_and_say_nothing_else(server: RunningServer) -> None:
    health = _get(server, "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = _get(server, "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"listeners": True, "store": True, "migrations": True}}
    for answer in (health, ready):
        assert answer.headers["Cache-Control"] == "no-store"
        assert server.address not in answer.text and "iotdps" not in answer.text.lower()


def test_metrics_count_what_the_sdk_does(server: RunningServer) -> None:
    server.cli("enrollment", "create", "ops-1", "--symmetric-key", "--hub", HUB, "--allocation-policy", "static")
    primary, _ = server.symmetric_keys("enrollment", "ops-1")
    before = _samples(_scrape(server).text)

    # Scrape continuously while the device registers: the page must stay consistent under load.
    scrapes: list[int] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            scrapes.append(_scrape(server).status_code)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        result = _sas_client(server, "ops-1", primary).register()
        assert result.status == "assigned" and result.registration_state.assigned_hub == HUB
        with pytest.raises((ClientError, CredentialError)):  # the wrong key: refused
            _sas_client(server, "ops-1", "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkgd3Jvbmc=").register()
        # A client that sends a broken ClientHello and hangs up: a handshake failure.
        with socket.create_connection((server.address, 8883)) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")
    finally:
        stop.set()
        scraper.join()
    assert scrapes and set(scrapes) == {200}

    page = _scrape(server)
    assert page.headers["Content-Type"].startswith("text/plain")
    after = _samples(page.text)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assigned = 'iotdps_registrations_total{attestation="symmetricKey",outcome="assigned",transport="mqtt"}'
    assert grew(assigned) == 1
    assert grew('iotdps_registration_duration_seconds_count{attestation="symmetricKey",transport="mqtt"}') >= 1
    assert sum(grew(k) for k in after if k.startswith("iotdps_refusals_total{")) >= 1

    def handshake_failures() -> float:
        return sum(grew(k) for k in after if k.startswith("iotdps_tls_handshake_failures_total{"))

    deadline = time.monotonic() + 10
    while handshake_failures() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _samples(_scrape(server).text)
    assert handshake_failures() >= 1, [k for k in after if "handshake" in k]
    assert after[f'iotdps_listener_connections{{listener="{server.address}:8883"}}'] >= 0
    assert f'iotdps_hub_connected_devices{{hub="{HUB}"}}' in after
    assert grew('iotdps_store_unit_duration_seconds_count{kind="write"}') >= 1
    # No registration id, device id or peer address in any label.
    assert "ops-1" not in page.text
    assert f'"{server.address}:' not in page.text.replace(f'listener="{server.address}:', "")
    # The management port serves the same page: the same families and series.
    management = _scrape(server, 8443)
    assert management.status_code == 200
    assert _families(management.text) == _families(page.text)
    assert set(_samples(management.text)) >= {k for k in after if not k.startswith("process_")}


def _families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_metrics_token_file_is_private_and_named_at_start(server: RunningServer) -> None:
    token_file = server.data_dir / "metrics-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert str(token_file) in server.log() and token not in server.log()
    assert f"https://{server.address}:{METRICS_PORT}/metrics" in server.log()
    # Without it, neither port shows the page.
    for port in (METRICS_PORT, 8443):
        answer = requests.get(f"https://{server.address}:{port}/metrics", verify=str(server.server_ca_path), timeout=30)
        assert answer.status_code == 401 and "iotdps_" not in answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_without_auth_when_the_operator_says_so(tmp_path: Path) -> None:
    running = start_server(
        tmp_path, extra_args=["--metrics-port", "9465"], env={"IOTDPS_METRICS_REQUIRE_AUTH": "false"}
    )
    try:
        for port in (9465, 8443):
            answer = requests.get(
                f"https://{running.address}:{port}/metrics", verify=str(running.server_ca_path), timeout=30
            )
            assert answer.status_code == 200 and "iotdps_registrations_total" in answer.text
        assert not (running.data_dir / "metrics-token").exists()
    finally:
        assert running.stop() == 0
    assert "/metrics answers without credentials" in running.log()


def test_a_weak_token_file_is_one_error_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from iotdps_testing.server import SRC

    weak = tmp_path / "token"
    weak.write_text("secret\n")
    done = subprocess.run(
        [sys.executable, "-m", "iotdps", "up"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(tmp_path / "data"), "IOTDPS_METRICS_TOKEN_FILE": str(weak)},
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-2:] == [
        "error: invalid configuration:",
        f"  - metrics.token_file {weak} must hold one token of at least 32 printable ASCII characters",
    ]


def test_json_logs_are_one_object_per_line_with_event_names(server: RunningServer) -> None:
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    assert lines, server.log()
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "event", "message"} <= set(record)
        assert record["time"].endswith("Z")
    events = {r["event"] for r in records}
    assert "registration_assigned" in events, events
    refused = [r for r in records if r["event"] == "refused" and r.get("kind")]
    assert refused and all(isinstance(r["args"], list) for r in refused)
    handshake = [r for r in records if r["event"] == "tls_handshake_failed"]
    assert handshake and handshake[0]["reason"] and handshake[0]["peer"]


def test_text_and_json_carry_the_same_events(tmp_path: Path) -> None:
    """The same server start, once per format: the same records, in the same order."""
    texts: dict[str, list[str]] = {}
    for fmt in ("text", "json"):
        running = start_server(tmp_path / fmt, extra_args=["--log-format", fmt, "--log-level", "debug"])
        assert running.stop() == 0
        log = running.log().splitlines()
        if fmt == "json":
            texts[fmt] = [json.loads(x)["logger"] for x in log if x.startswith("{")]
        else:
            texts[fmt] = [x.split(" ", 4)[3].rstrip(":") for x in log if x[:2] == "20" and " " in x]
    assert texts["text"] and texts["json"] == texts["text"]


def test_bad_log_format_is_one_error_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from iotdps_testing.server import SRC

    done = subprocess.run(
        [sys.executable, "-m", "iotdps", "up", "--log-format", "xml"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(tmp_path)},
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'xml' is not one of 'text', 'json'" in done.stderr
