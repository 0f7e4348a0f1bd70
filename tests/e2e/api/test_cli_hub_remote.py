"""The hub commands against a remote server: `device list`, `telemetry tail`, `twin show`,
`twin update-desired`, `method invoke`, `c2d send` with --server/--policy/--key (and a
connection string), against a real `iotdps up` with the official device SDK connected.

The CLI runs as a subprocess whose data dir is empty: everything it prints came through the
management API's hub routes (the token names the hub, as does the x-iotdps-hub header).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubRegistryManager

from iotdps_testing.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
logging.getLogger("azure").setLevel(logging.WARNING)

SRC = str(Path(__file__).resolve().parents[3] / "src")
MGMT_PORT = 8443


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("hub-remote"))
    try:
        yield srv
    finally:
        srv.stop()


def _key(server: RunningServer, policy: str) -> str:
    doc = json.loads((server.data_dir / "access-policies.json").read_text())
    return str(next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy))


class Remote:
    """`iotdps` in a subprocess, pointed at the server only (its own data dir stays empty)."""

    def __init__(self, server: RunningServer, tmp: Path) -> None:
        self.hub = server.address  # the one hub shares the DPS host name
        self.local = tmp / "unused-local-data"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": SRC,
            "IOTDPS_DATA_DIR": str(self.local),
            "IOTDPS_SERVER_CA": str(server.server_ca_path),
        }
        self.server_args = [
            "--server",
            f"https://{server.address}:{MGMT_PORT}",
            "--policy",
            "iothubowner",
            "--key",
            _key(server, "iothubowner"),
        ]

    def start(self, *args: str, server: list[str] | None = None) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "iotdps", *args, *(self.server_args if server is None else server)]
        return subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, *args: str, expect: int = 0, server: list[str] | None = None) -> tuple[str, str]:
        process = self.start(*args, server=server)
        out, err = process.communicate(timeout=90)
        assert process.returncode == expect, f"iotdps {' '.join(args)} exited {process.returncode}:\n{out}\n{err}"
        return out, err

    def out(self, *args: str, server: list[str] | None = None) -> str:
        return self.run(*args, server=server)[0]

    def error(self, *args: str, expect: int, server: list[str] | None = None) -> str:
        out, err = self.run(*args, expect=expect, server=server)
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
        return err.strip()


def _wait(q: queue.Queue[Any], seconds: float = 15.0) -> Any:
    return q.get(timeout=seconds)


def test_hub_commands_against_a_remote_server(server: RunningServer, tmp_path: Path) -> None:
    remote = Remote(server, tmp_path)
    hub = remote.hub
    cs = f"HostName={hub}:{MGMT_PORT};SharedAccessKeyName=iothubowner;SharedAccessKey={_key(server, 'iothubowner')}"
    registry = IoTHubRegistryManager.from_connection_string(cs)
    registry.protocol.config.connection.verify = str(server.server_ca_path)
    key = base64.b64encode(os.urandom(32)).decode()
    registry.create_device_with_sas("remote-dev", key, base64.b64encode(os.urandom(32)).decode(), "enabled")
    registry.create_device_with_sas("remote-off", base64.b64encode(os.urandom(32)).decode(), key, "enabled")

    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id="remote-dev", server_verification_cert=server.server_ca
    )
    messages: queue.Queue[Any] = queue.Queue()
    patches: queue.Queue[Any] = queue.Queue()

    def on_method(request: Any) -> None:
        client.send_method_response(MethodResponse.create_from_method_request(request, 201, {"got": request.payload}))

    client.connect()
    try:
        client.on_message_received = messages.put
        client.on_method_request_received = on_method
        client.on_twin_desired_properties_patch_received = patches.put
        client.send_message("one")

        # device list: the table and --json, as locally.
        listing = remote.out("device", "list", "--hub", hub)
        assert [line.split() for line in listing.splitlines()] == [
            ["device", "id", "status", "auth"],
            ["remote-dev", "enabled", "sas"],
            ["remote-off", "enabled", "sas"],
        ]
        assert json.loads(remote.out("device", "list", "--hub", hub, "--json")) == [
            {"deviceId": "remote-dev", "status": "enabled", "auth": "sas"},
            {"deviceId": "remote-off", "status": "enabled", "auth": "sas"},
        ]
        assert key not in listing

        # telemetry tail: the hub's recent messages, then one sent while following.
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while not lines and time.monotonic() < deadline:
            lines = [json.loads(x) for x in remote.out("telemetry", "tail", "--hub", hub, "--no-follow").splitlines()]
        assert [(m["deviceId"], m["body"]) for m in lines] == [("remote-dev", "one")]
        assert isinstance(lines[0]["seq"], int) and lines[0]["enqueuedTime"].endswith("+00:00")
        tail = remote.start("telemetry", "tail", "--hub", hub, "--device", "remote-dev", "--for", "6")
        time.sleep(3.0)  # the tail has printed the recent message and is polling
        client.send_message("two")
        followed, err = tail.communicate(timeout=60)
        assert tail.returncode == 0, err
        assert [json.loads(x)["body"] for x in followed.splitlines()] == ["one", "two"]

        # method invoke: the device's answer.
        answer = json.loads(
            remote.out(
                "method", "invoke", "--hub", hub, "--device", "remote-dev", "--name", "go", "--payload", '{"x": 1}'
            )
        )
        assert answer == {"status": 201, "payload": {"got": {"x": 1}}}

        # c2d send: the message id printed is the one the device receives.
        mid = remote.out("c2d", "send", "--hub", hub, "--device", "remote-dev", "--body", "hi", "--property", "a=b")
        received = _wait(messages)
        assert (
            received.data == b"hi" and received.message_id == mid.strip() and received.custom_properties == {"a": "b"}
        )

        # twin: update the desired properties (pushed to the device), then show; --if-match
        # takes the etag `twin show` printed, and a stale one is refused (exit 2).
        before = json.loads(remote.out("twin", "show", "--hub", hub, "--device", "remote-dev"))
        updated = json.loads(
            remote.out(
                "twin", "update-desired", "--hub", hub, "--device", "remote-dev",
                "--patch", '{"led": "on"}', "--if-match", before["etag"],
            )
        )  # fmt: skip
        assert updated["properties"]["desired"]["led"] == "on"
        assert _wait(patches)["led"] == "on"
        twin = json.loads(remote.out("twin", "show", "--hub", hub, "--device", "remote-dev"))
        assert twin["deviceId"] == "remote-dev" and twin["properties"]["desired"]["led"] == "on"
        assert twin["version"] > before["version"] and twin["etag"] != before["etag"]
        remote.error(
            "twin", "update-desired", "--hub", hub, "--device", "remote-dev",
            "--patch", '{"led": "off"}', "--if-match", before["etag"],
            expect=2,
        )  # fmt: skip

        # The connection string alone names the server and the policy.
        by_cs = remote.out("device", "list", "--hub", hub, "--json", server=["--connection-string", cs])
        assert [d["deviceId"] for d in json.loads(by_cs)] == ["remote-dev", "remote-off"]

        # Exit codes: 3 for what is not there, 2 for bad input or a refused request.
        assert "hub nosuch.example is not served" in remote.error(
            "telemetry", "tail", "--hub", "nosuch.example", "--no-follow", expect=3
        )
        remote.error("device", "list", "--hub", "nosuch.example", expect=3)
        remote.error("twin", "show", "--hub", hub, "--device", "nobody", expect=3)
        remote.error(
            "method", "invoke", "--hub", hub, "--device", "remote-off", "--name", "x", "--timeout", "1", expect=3
        )
        remote.error("c2d", "send", "--hub", hub, "--device", "nobody", "--body", "x", expect=3)
        remote.error("twin", "update-desired", "--hub", hub, "--device", "remote-dev", "--patch", "[1]", expect=2)
        dps_owner = [
            "--server",
            f"https://{hub}:{MGMT_PORT}",
            "--policy",
            "provisioningserviceowner",
            "--key",
            _key(server, "provisioningserviceowner"),
        ]
        refused = remote.error("device", "list", "--hub", hub, expect=2, server=dps_owner)
        assert "does not grant RegistryRead" in refused
        wrong_key = [*remote.server_args[:-1], base64.b64encode(os.urandom(32)).decode()]
        remote.error("twin", "show", "--hub", hub, "--device", "remote-dev", expect=2, server=wrong_key)
    finally:
        client.shutdown()
    # Nothing went to the local data dir: every command talked to the server.
    assert not (remote.local / "iotdps.db").exists()
