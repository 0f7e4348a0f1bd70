"""Our own device client as a TPM device: `iotdps device run --tpm` (tpm2-pytss on swtpm)
against a real `iotdps up`.

The client registers over HTTPS (challenge, activation in the TPM, TPM-signed SAS, polling),
imports the hub key blob into the TPM, connects to its hub with a hub SAS signed in the TPM and
sends telemetry. The second start goes straight to the cached hub: the state file holds no
secret, the hub key stays in the TPM. Refusals end in one `error:` line and exit 2.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdps.device import DeviceAgent, DeviceSettings, TpmCredential
from iotdps.device.tpm import Tpm
from iotdps.store import open_store
from iotdps_testing.server import SRC, RunningServer, start_server
from iotdps_testing.swtpm import Swtpm, running_swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("tpm-client"))
    yield running
    assert running.stop() == 0, running.log()


def device_run(
    server: RunningServer, tpm: Swtpm, registration_id: str, state: Path, *extra: str
) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "iotdps", "device", "run", "--tpm", "--tcti", tpm.tcti]
    argv += ["--provisioning-host", server.address, "--id-scope", server.id_scope]
    argv += ["--registration-id", registration_id, "--ca", str(server.server_ca_path), "--state", str(state), *extra]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    return done.returncode, done.stdout, done.stderr


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def telemetry(server: RunningServer, hub: str, device_id: str) -> list[bytes]:
    async def read() -> list[Any]:
        store = await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                return [m.body for m in await uow.telemetry.list(hub, device_id)]  # type: ignore[attr-defined]
        finally:
            await store.close()

    return asyncio.run(read())


def wait_for_telemetry(server: RunningServer, hub: str, device_id: str, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(telemetry(server, hub, device_id)) < count:
        time.sleep(0.2)
    return telemetry(server, hub, device_id)


def test_device_run_tpm_provisions_then_reuses_the_cached_hub(server: RunningServer, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "tpm") as tpm:
        ek_file = tmp_path / "ek.pub"
        ek_file.write_bytes(tpm.ek_public)
        server.cli("enrollment", "create", "py-tpm-1", "--endorsement-key", str(ek_file), "--device-id", "py-tpm-dev")
        state = tmp_path / "py-tpm-1.json"
        code, out, err = device_run(
            server, tpm, "py-tpm-1", state, "--count", "2", "--interval", "0", "--message", "m1"
        )
        assert code == 0, err
        first = events(out)
        assert first[0] == {"event": "connected", "hub": server.address, "deviceId": "py-tpm-dev", "provisioned": True}
        assert [e for e in first if e["event"] == "sent"] == [{"event": "sent", "seq": 0}, {"event": "sent", "seq": 1}]
        record = server.registration("py-tpm-1")
        assert record.status == "assigned" and record.attestation_type == "tpm"
        # The cache names the hub and nothing secret; the hub key lives in the TPM.
        cached = json.loads(state.read_text())
        assert cached["assignedHub"] == server.address and cached["deviceId"] == "py-tpm-dev"
        assert not {"key", "symmetricKey", "authenticationKey"} & set(cached)
        assert state.stat().st_mode & 0o077 == 0
        # Second start: straight to the cached hub, the hub token signed by the TPM's hub key.
        code, out, err = device_run(server, tpm, "py-tpm-1", state, "--count", "1", "--message", "m2")
        assert code == 0, err
        assert events(out)[0]["provisioned"] is False
    assert wait_for_telemetry(server, server.address, "py-tpm-dev", 3) == [b"m1", b"m1", b"m2"]
    # The service registered it once: the second start did not touch DPS.
    assert server.registration("py-tpm-1").operation_id == record.operation_id


def test_the_api_agent_with_a_tpm_credential(server: RunningServer, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "tpm") as swtpm:
        server.cli(
            "enrollment", "create", "py-tpm-api", "--endorsement-key", base64.b64encode(swtpm.ek_public).decode()
        )

        async def go() -> tuple[str, int]:
            with Tpm(swtpm.tcti) as tpm:
                settings = DeviceSettings(
                    server.address,
                    server.id_scope,
                    "py-tpm-api",
                    TpmCredential(tpm),
                    tmp_path / "state.json",
                    ca_pem=server.server_ca,
                )
                agent = DeviceAgent(settings)
                client = await agent.start()
                try:
                    await client.send_telemetry("from the API")
                finally:
                    await agent.stop()
                assert agent.assignment is not None
                return agent.assignment.device_id, agent.provisioned

        device_id, provisioned = asyncio.run(go())
    assert (device_id, provisioned) == ("py-tpm-api", 1)
    assert wait_for_telemetry(server, server.address, "py-tpm-api", 1) == [b"from the API"]


def test_another_tpm_under_an_enrolled_id_is_refused_with_one_error_line(server: RunningServer, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "enrolled") as enrolled, running_swtpm(tmp_path / "other") as other:
        server.cli(
            "enrollment", "create", "py-tpm-2", "--endorsement-key", base64.b64encode(enrolled.ek_public).decode()
        )
        code, out, err = device_run(server, other, "py-tpm-2", tmp_path / "state.json")
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "sent no TPM challenge" in lines[0] and "HTTP 401" in lines[0]
    assert server.refusals("py-tpm-2")[0].reason == "TPM_EK_MISMATCH"
    assert not (tmp_path / "state.json").exists()


def test_an_unreachable_or_unprovisioned_tpm_is_one_error_line(server: RunningServer, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "bare", provision=False) as bare:
        code, _, err = device_run(server, bare, "py-tpm-3", tmp_path / "state.json")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: no endorsement key at 0x81010001: provision the TPM first (see the README)"
    ]
    gone = Swtpm(bare.host, bare.port, bare.ctrl_port, tmp_path / "bare", bare.process)  # stopped above
    code, _, err = device_run(server, gone, "py-tpm-3", tmp_path / "state.json")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(
        "error: cannot open the TPM at 'swtpm:host=127.0.0.1"
    ), err
