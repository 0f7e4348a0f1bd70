"""`iotdps telemetry tail --server`: follow a hub's telemetry through a node the device never
touched. Two real `iotdps up` nodes on one PostgreSQL; the unmodified azure-iot-device SDK sends
through node B while the tail runs as a real `iotdps` process against node A's management API."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient
from click.testing import CliRunner

from iotdps.cli.main import cli
from iotdps_testing.cluster import enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import SRC, RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MESSAGES = 5


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, RunningServer, RunningServer]]:
    with pg_database() as dsn:
        nodes: list[RunningServer] = []
        try:
            hub = free_loopback_address((8883, 443, 8443))
            nodes.append(start_node(tmp_path, service_host=hub, address=hub, dsn=dsn))  # B: devices go here
            nodes.append(start_node(tmp_path, service_host=hub, dsn=dsn))  # A: the operator's node
            yield dsn, nodes[0], nodes[1]
        finally:
            for node in nodes:
                node.stop()


def _send(node: RunningServer, name: str, key: str) -> None:
    result = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=node.address,
        registration_id=name,
        id_scope=node.id_scope,
        symmetric_key=key,
        server_verification_cert=node.server_ca,
    ).register()
    assert result.status == "assigned"
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=node.address, device_id=name, server_verification_cert=node.server_ca
    )
    client.connect()
    try:
        for i in range(MESSAGES):
            client.send_message(f"{name} {i}")
    finally:
        client.shutdown()


def _connection_string(node: RunningServer, hub: str, key: str | None = None) -> str:
    doc = json.loads((node.data_dir / "access-policies.json").read_text())
    found = next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == "iothubowner")
    return f"HostName={hub};SharedAccessKeyName=iothubowner;SharedAccessKey={key or found}"


def _lines(process: subprocess.Popen[str], wanted: int, timeout: float) -> list[str]:
    """The first `wanted` stdout lines of `process`, waiting at most `timeout` seconds."""
    got: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [got.put(line) for line in stdout], daemon=True).start()
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while len(out) < wanted and time.monotonic() < deadline:
        try:
            out.append(got.get(timeout=0.2))
        except queue.Empty:
            if process.poll() is not None and got.empty():
                break
    return out


def test_tail_through_another_node_follows_the_device(two_nodes: tuple[str, RunningServer, RunningServer]) -> None:
    dsn, b, a = two_nodes
    hub = b.address  # the hub shares the service's name, which is B's address here
    key = asyncio.run(enroll_symmetric_key(dsn, "tail-dev"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1", IOTDPS_CONNECTION_STRING=_connection_string(a, hub))
    # Started before anything was sent: it must still show every message, in order.
    tail = subprocess.Popen(
        [sys.executable, "-m", "iotdps", "telemetry", "tail", "--hub", hub, "--server", f"https://{a.address}:8443",
         "--server-ca", str(a.server_ca_path), "--for", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _send(b, "tail-dev", key)
        lines = _lines(tail, MESSAGES, 45)
    finally:
        tail.terminate()
        _, err = tail.communicate(timeout=10)
    docs = [json.loads(line) for line in lines]
    assert [d["body"] for d in docs] == [f"tail-dev {i}" for i in range(MESSAGES)], err
    assert {d["deviceId"] for d in docs} == {"tail-dev"}
    assert [d["seq"] for d in docs] == sorted(d["seq"] for d in docs)
    assert docs[0]["systemProperties"]["connection_device_id"] == "tail-dev"
    assert "SharedAccessKey" not in err and "SharedAccessSignature" not in err

    # --no-follow, one device, the newest two.
    runner = CliRunner()
    shown = runner.invoke(
        cli,
        ["telemetry", "tail", "--hub", hub, "--device", "tail-dev", "--no-follow", "--limit", "2",
         "--connection-string", _connection_string(a, hub), "--server", f"https://{a.address}:8443",
         "--server-ca", str(a.server_ca_path)],
        catch_exceptions=False,
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert [json.loads(line)["body"] for line in shown.output.splitlines()] == [
        f"tail-dev {MESSAGES - 2}",
        f"tail-dev {MESSAGES - 1}",
    ]
    # Local output and remote output are the same lines.
    local = runner.invoke(
        cli,
        ["telemetry", "tail", "--hub", hub, "--device", "tail-dev", "--no-follow", "--limit", "2", "--dsn", dsn],
        catch_exceptions=False,
    )
    assert local.output == shown.output


def test_tail_refusals_are_one_error_line(two_nodes: tuple[str, RunningServer, RunningServer]) -> None:
    _, b, a = two_nodes
    server = ["--server", f"https://{a.address}:8443", "--server-ca", str(a.server_ca_path)]
    forged = base64.b64encode(os.urandom(32)).decode()
    own = _connection_string(a, b.address)
    # Exit 2 for bad input, 3 for what is not there (cli.output).
    cases = [
        (["--hub", b.address, "--connection-string", _connection_string(a, b.address, forged)], "error: ", 2),
        (["--hub", "no-such-hub.example", "--connection-string", own], "hub", 3),
        (["--hub", b.address, "--device", "bad/id", "--connection-string", own], "device id", 2),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env["PYTHONPATH"] = str(SRC)
    for args, says, code in cases:
        result = subprocess.run(
            [sys.executable, "-m", "iotdps", "telemetry", "tail", "--no-follow", *server, *args],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert result.returncode == code, result.stderr
        assert result.stdout == ""
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert says in result.stderr, result.stderr
        assert forged not in result.stderr
