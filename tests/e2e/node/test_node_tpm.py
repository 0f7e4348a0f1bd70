"""The official Azure IoT Node SDK's TPM path, unmodified, against a real `iotdps up` and swtpm.

azure-iot-security-tpm 1.9.3 (tss.js 2.0.0) drives a fresh swtpm over its TCP command port;
azure-iot-provisioning-device(-http) 1.9.1 registers over HTTPS (the 401 challenge, the
activation in the TPM, the TPM-signed SAS, the hub key blob); azure-iot-device-mqtt 1.16.4
then connects to the assigned hub with the SDK's TpmAuthenticationProvider (hub SAS signed in
the TPM) and sends telemetry, which must land in the store.

The EK is read from 0x81010001 *after* the SDK has created it: the SDK's EK template has an
empty `unique` field, tpm2_createek's has 256 zero bytes, so the two give different keys on the
same TPM (docs/notes/tpm-groundwork.md). An enrollment is made from the key the device uses.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdps.store import open_store
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.swtpm import EK_HANDLE, SRK_HANDLE, running_swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "provision_tpm.js"
NODE_TIMEOUT = 90
PACKAGES = (
    "azure-iot-provisioning-device",
    "azure-iot-provisioning-device-http",
    "azure-iot-security-tpm",
    "tss.js",
    "azure-iot-device",
    "azure-iot-device-mqtt",
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    # Fail, not skip: a skipped SDK test would pass CI while proving nothing.
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the Node SDK tests need Node.js (with npm)", pytrace=False)
    modules = HERE / "node_modules"
    missing = [name for name in PACKAGES if not (modules / name / "package.json").is_file()]
    if missing:
        pytest.fail(
            f"Node SDK packages not installed ({', '.join(missing)}): run `npm ci --no-audit --no-fund` in {HERE}",
            pytrace=False,
        )
    return modules


@pytest.fixture(scope="module")
def server(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("node-tpm"))
    yield running
    assert running.stop() == 0, running.log()


def node_tpm(server: RunningServer, registration_id: str, tpm_port: int, *extra: str) -> dict[str, Any]:
    args = ["node", str(SCRIPT), "--host", server.address, "--scope", server.id_scope]
    args += ["--registration-id", registration_id, "--tpm-port", str(tpm_port), *extra]
    env = dict(os.environ)
    env["NODE_EXTRA_CA_CERTS"] = str(server.server_ca_path)
    env.pop("DEBUG", None)  # some of the SDK's debug namespaces print the SAS token
    done = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False)
    lines = done.stdout.strip().splitlines()
    assert done.returncode in (0, 1) and len(lines) == 1, (
        f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    report: dict[str, Any] = json.loads(lines[0])
    assert report["ok"] == (done.returncode == 0), report
    return report


def _telemetry(server: RunningServer, hub: str, device_id: str) -> list[bytes]:
    async def read() -> list[Any]:
        store = await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                return [m.body for m in await uow.telemetry.list(hub, device_id)]  # type: ignore[attr-defined]
        finally:
            await store.close()

    return asyncio.run(read())


def test_node_sdk_tpm_provisions_over_https_and_sends_telemetry_with_the_tpm_auth_provider(
    server: RunningServer, tmp_path: Path
) -> None:
    with running_swtpm(tmp_path / "tpm", provision=False) as tpm:
        # 1. The SDK creates its EK and SRK (nothing is at the handles yet)...
        keys = node_tpm(server, "node-tpm-1", tpm.port, "--keys-only", "yes")
        assert keys["ok"], keys
        # 2. ...and the factory reads the EK from the TPM, as `tpm2_readpublic -c 0x81010001` does.
        ek_file = tmp_path / "ek.pub"
        ek_file.write_bytes(tpm.read_public(EK_HANDLE))
        assert base64.b64decode(keys["endorsementKey"]) == ek_file.read_bytes()
        assert base64.b64decode(keys["storageRootKey"]) == tpm.read_public(SRK_HANDLE)
        server.cli(
            "enrollment", "create", "node-tpm-1", "--endorsement-key", str(ek_file), "--device-id", "node-tpm-dev"
        )
        # 3. The whole device: provisioning over HTTPS, then the hub with TPM-signed tokens.
        report = node_tpm(server, "node-tpm-1", tpm.port, "--message", "sent by tss.js")
    assert report["ok"], report
    state = report["registrationState"]
    assert state["assignedHub"] == server.address
    assert state["deviceId"] == "node-tpm-dev"
    assert report["sent"] is True
    assert server.registration("node-tpm-1").status == "assigned"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _telemetry(server, state["assignedHub"], "node-tpm-dev"):
        time.sleep(0.2)
    assert _telemetry(server, state["assignedHub"], "node-tpm-dev") == [b"sent by tss.js"]


def test_node_sdk_tpm_with_another_tpms_enrollment_is_refused(server: RunningServer, tmp_path: Path) -> None:
    # The enrollment names the EK of one TPM; the SDK runs on another TPM under the same id.
    with running_swtpm(tmp_path / "enrolled") as enrolled, running_swtpm(tmp_path / "other") as other:
        ek = base64.b64encode(enrolled.ek_public).decode("ascii")
        server.cli("enrollment", "create", "node-tpm-2", "--endorsement-key", ek)
        report = node_tpm(server, "node-tpm-2", other.port)
    assert not report["ok"]
    assert report["stage"] == "provision"
    # The service answers 401 without an authenticationKey; the SDK accepts only a 401 with
    # one, and says so.
    assert report["error"]["name"] == "FormatError", report
    assert "authentication blob" in report["error"]["message"]
    assert server.refusals("node-tpm-2")[0].reason == "TPM_EK_MISMATCH"
    assert server.registration("node-tpm-2") is None
