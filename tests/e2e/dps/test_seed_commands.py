"""Seed 001 verbatim (issue 17): the four CA commands with no arguments, in order, against a
running `iotdps up`, then the device provisions with the unmodified azure-iot-device SDK.

    create-ca-root              the root, registered with the service (its data dir is configured)
    proof-ca-root-possession    upload, code, verification certificate, verify
    create-ca-intermediate      a generated name under the only root, and its enrollment group
    create-device-cert          a generated registration id under the newest intermediate, printed
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient

from iotdps_testing.server import SRC, RunningServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "srv")
    yield running
    running.stop()


def _bare(command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "iotdps", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"iotdps {command}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_seeds_four_commands_bare_then_the_sdk_provisions(server: RunningServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(
        PYTHONPATH=str(SRC),
        IOTDPS_DATA_DIR=str(server.data_dir),
        IOTDPS_CA_DIR=str(tmp_path / "ca"),
        IOTDPS_CA_PASSPHRASE="a long factory passphrase",
    )
    factory = tmp_path / "factory"
    factory.mkdir()

    root = _bare("create-ca-root", env, factory)
    assert "registered with the provisioning service as 'root' (unverified)" in root
    assert server.cli_json("ca", "show", "root")["properties"]["isVerified"] is False

    assert "verified on the provisioning service" in _bare("proof-ca-root-possession", env, factory)
    assert server.cli_json("ca", "show", "root")["properties"]["isVerified"] is True

    intermediate = _bare("create-ca-intermediate", env, factory)
    name = re.search(r"intermediate CA '(intermediate-[0-9a-f]{6})' \(parent 'root'", intermediate)
    assert name is not None, intermediate
    assert f"enrollment group {name[1]!r} created" in intermediate

    device = _bare("create-device-cert", env, factory)
    rid = re.search(rf"device '(device-[0-9a-f]{{8}})' \(CA '{name[1]}'\)", device)
    assert rid is not None, device
    registration_id = rid[1]

    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        x509=X509(str(factory / f"{registration_id}.cert.pem"), str(factory / f"{registration_id}.key.pem")),
        server_verification_cert=server.server_ca,
    )
    result = client.register()
    assert result.status == "assigned"
    assert result.registration_state.device_id == registration_id
    record = server.registration(registration_id)
    assert record is not None and record.enrollment_group_id == name[1]
