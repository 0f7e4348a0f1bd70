"""The official Azure IoT Node SDK (azure-iot-provisioning-device 1.9.1 over HTTPS), unmodified,
against a real `iotdps up`.

Each registration is one `node provision.js` process: the SDK's HTTP transport connects to port
443 of the server's loopback address, PUTs the register request and polls the operation. The
server's private CA is trusted through NODE_EXTRA_CA_CERTS, which is how a Node program trusts a
private CA without code changes (the transport has no CA option). The packages come from
package-lock.json (`npm ci` in this directory; .ci/run does it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from iotdps_testing.devcerts import derived_key, self_signed_device
from iotdps_testing.net import free_loopback_address, free_port
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "provision.js"
HUB_A = "hub-a.iotdps.test"
HUB_B = "hub-b.iotdps.test"
PASSPHRASE = "factory-passphrase-for-tests"
# The SDK gives up on its own after 30 s without an answer; this only bounds a stuck process.
NODE_TIMEOUT = 60


@pytest.fixture(scope="module")
def node_modules() -> Path:
    # Fail, not skip: a skipped SDK test would pass CI while proving nothing.
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the Node SDK tests need Node.js (with npm)", pytrace=False)
    modules = HERE / "node_modules"
    missing = [
        name
        for name in (
            "azure-iot-provisioning-device",
            "azure-iot-provisioning-device-http",
            "azure-iot-security-symmetric-key",
            "azure-iot-security-x509",
        )
        if not (modules / name / "package.json").is_file()
    ]
    if missing:
        pytest.fail(
            f"Node SDK packages not installed ({', '.join(missing)}): run "
            f"`npm ci --no-audit --no-fund` in {HERE} (.ci/run does this)",
            pytrace=False,
        )
    return modules


@pytest.fixture(scope="module")
def webhook_port() -> int:
    """The custom-allocation webhook's port, chosen before the server starts: plain HTTP on
    loopback is a webhook destination only when the configuration's allowlist names it."""
    return free_port()


@pytest.fixture(scope="module")
def server(node_modules: Path, webhook_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Depends on node_modules so that a missing install fails before a server starts.
    tmp = tmp_path_factory.mktemp("node-dps")
    address = free_loopback_address()
    # Both hubs are named here only; provisioning assigns, nobody connects to them.
    config = (
        f'[[hubs]]\nhost_name = "{HUB_A}"\nbind = "{address}"\n[[hubs]]\nhost_name = "{HUB_B}"\nbind = "{address}"\n'
        f'[allocation]\nwebhook_allowlist = ["http://127.0.0.1:{webhook_port}/allocate"]\n'
    )
    running = start_server(tmp, address=address, config=config)
    yield running
    assert running.stop() == 0, running.log()


def register(
    server: RunningServer,
    registration_id: str,
    *,
    trust_ca: bool = True,
    payload: Any = None,
    debug: str | None = None,
    **credential: str,
) -> dict[str, Any]:
    """Run one registration through the Node SDK; return its one-line JSON report (plus the
    SDK's debug output under "stderr" when `debug` names `debug` namespaces to enable)."""
    args = ["node", str(SCRIPT), "--host", server.address, "--scope", server.id_scope]
    args += ["--registration-id", registration_id]
    for name, value in credential.items():
        args += [f"--{name.replace('_', '-')}", value]
    env = dict(os.environ)
    env.pop("NODE_EXTRA_CA_CERTS", None)
    if trust_ca:
        env["NODE_EXTRA_CA_CERTS"] = str(server.server_ca_path)
    if payload is not None:
        args += ["--payload", json.dumps(payload)]
    env.pop("DEBUG", None)  # some of the SDK's debug namespaces print the SAS token
    if debug:
        env["DEBUG"] = debug
    done = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    lines = done.stdout.strip().splitlines()
    assert done.returncode in (0, 1) and len(lines) == 1, (
        f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    report: dict[str, Any] = json.loads(lines[0])
    assert report["ok"] == (done.returncode == 0), report
    report["stderr"] = done.stderr
    return report


def assigned(report: dict[str, Any]) -> dict[str, Any]:
    assert report["ok"], f"the Node SDK reported a failure: {report['error']}"
    state: dict[str, Any] = report["registrationState"]
    assert state["status"] == "assigned", state
    return state


# --------------------------------------------------------------------------- X.509


def test_x509_self_signed_individual(server: RunningServer, tmp_path: Path) -> None:
    dev = self_signed_device(tmp_path, "node-solo-1")
    cert, key = dev.cert_file, dev.key_file
    server.cli(
        "enrollment", "create", "node-solo-1", "--cert", str(cert),
        "--device-id", "node-solo-device", "--hub", HUB_B, "--allocation-policy", "static",
    )  # fmt: skip
    state = assigned(register(server, "node-solo-1", cert=str(cert), key=str(key)))
    assert state["assignedHub"] == HUB_B
    assert state["deviceId"] == "node-solo-device"
    assert state["registrationId"] == "node-solo-1"
    assert server.registration("node-solo-1").status == "assigned"


def test_x509_chain_through_intermediate_group(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Seed 001's factory side from our own CLI: root proven to the service, a group on the
    # intermediate, a device cert signed by the intermediate.
    ca_dir = tmp_path_factory.mktemp("node-ca")
    server.env.update({"IOTDPS_CA_DIR": str(ca_dir), "IOTDPS_CA_PASSPHRASE": PASSPHRASE})
    server.cli("create-ca-root", "--name", "node-root")
    server.cli("create-ca-intermediate", "--name", "node-line", "--parent", "node-root")
    server.cli("ca", "upload", "node-root", str(ca_dir / "node-root.cert.pem"))
    code = _verification_code(server.cli("ca", "verification-code", "node-root"))
    proof = ca_dir / "verification.pem"
    server.cli("proof-ca-root-possession", "--ca", "node-root", "--verification-code", code, "--out", str(proof))
    server.cli("ca", "verify", "node-root", str(proof))
    server.cli("group", "create", "node-line", "--signing-cert", str(ca_dir / "node-line.cert.pem"))
    out = ca_dir / "devices"
    server.cli("create-device-cert", "--registration-id", "node-line-7", "--ca", "node-line", "--out", str(out))
    # The device presents its leaf and the intermediate, as the factory writes them.
    state = assigned(
        register(server, "node-line-7", cert=str(out / "node-line-7.cert.pem"), key=str(out / "node-line-7.key.pem"))
    )
    assert state["deviceId"] == "node-line-7"
    assert state["assignedHub"] in (HUB_A, HUB_B)
    assert server.registration("node-line-7").enrollment_group_id == "node-line"


def _verification_code(output: str) -> str:
    for token in output.replace(":", " ").split():
        if len(token) >= 32 and token.isalnum() and token.upper() == token:
            return token
    raise AssertionError(f"no verification code in {output!r}")


# --------------------------------------------------------------------------- symmetric key


def test_symmetric_key_individual(server: RunningServer) -> None:
    server.cli("enrollment", "create", "node-sym-1", "--symmetric-key", "--hub", HUB_A, "--allocation-policy", "static")
    primary, _ = server.symmetric_keys("enrollment", "node-sym-1")
    state = assigned(register(server, "node-sym-1", symmetric_key=primary))
    assert state["assignedHub"] == HUB_A
    assert state["deviceId"] == "node-sym-1"


def test_symmetric_key_group_derived(server: RunningServer) -> None:
    server.cli("group", "create", "node-sym-group", "--symmetric-key")
    primary, _ = server.symmetric_keys("group", "node-sym-group")
    state = assigned(register(server, "node-grp-3", symmetric_key=derived_key(primary, "node-grp-3")))
    assert state["deviceId"] == "node-grp-3"
    assert state["assignedHub"] in (HUB_A, HUB_B)
    assert server.registration("node-grp-3").enrollment_group_id == "node-sym-group"


# --------------------------------------------------------------------------- polling

# Longer than the server's direct-answer budget (1 s), so the register PUT answers 202 and the
# SDK polls the operation with GET.
WEBHOOK_DELAY = 1.5


class _SlowWebhook(BaseHTTPRequestHandler):
    seen: list[Any]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        type(self).seen.append(request)
        time.sleep(WEBHOOK_DELAY)
        payload = request["deviceRuntimeContext"].get("payload")
        answer = json.dumps({"iotHubHostName": HUB_B, "payload": {"echo": payload}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def slow_webhook(webhook_port: int) -> Iterator[tuple[str, list[Any]]]:
    handler = type("Handler", (_SlowWebhook,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", webhook_port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/allocate", handler.seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_slow_custom_allocation_is_polled(server: RunningServer, slow_webhook: tuple[str, list[Any]]) -> None:
    url, seen = slow_webhook
    server.cli(
        "enrollment", "create", "node-slow-1", "--symmetric-key", "--allocation-policy", "custom", "--webhook-url", url
    )  # fmt: skip
    primary, _ = server.symmetric_keys("enrollment", "node-slow-1")
    report = register(
        server,
        "node-slow-1",
        symmetric_key=primary,
        payload={"line": 4},
        debug="azure-iot-provisioning-device:PollingStateMachine",
    )
    state = assigned(report)
    # The SDK went through 202 + GET .../operations/{id}, and the device payload made the round trip.
    assert "to polling" in report["stderr"], report["stderr"]
    assert state["assignedHub"] == HUB_B
    assert state["payload"] == {"echo": {"line": 4}}
    assert [r["deviceRuntimeContext"]["registrationId"] for r in seen] == ["node-slow-1"]


# --------------------------------------------------------------------------- refused


def test_wrong_key_is_refused(server: RunningServer) -> None:
    server.cli("enrollment", "create", "node-sym-bad", "--symmetric-key")
    report = register(server, "node-sym-bad", symmetric_key=base64.b64encode(b"x" * 64).decode())
    assert not report["ok"]
    assert report["error"]["name"] == "UnauthorizedError", report["error"]
    assert report["error"]["statusCode"] == 401
    refusals = server.refusals("node-sym-bad")
    assert refusals, "no refusal recorded"
    assert refusals[0].reason == "SAS_BAD_SIGNATURE"


def test_server_certificate_is_checked(server: RunningServer) -> None:
    # Without the server CA the SDK refuses our server: the TLS in these tests is real, and
    # NODE_EXTRA_CA_CERTS is what makes a private-CA clone reachable.
    server.cli("enrollment", "create", "node-untrusting", "--symmetric-key")
    primary, _ = server.symmetric_keys("enrollment", "node-untrusting")
    report = register(server, "node-untrusting", trust_ca=False, symmetric_key=primary)
    assert not report["ok"]
    assert report["error"]["code"] in ("SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_VERIFY_LEAF_SIGNATURE"), report
    assert server.registration("node-untrusting") is None
