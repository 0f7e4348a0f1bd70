"""The CLI against a running server: seed 001's round trip and the admin commands with --server.

create-ca-root -> proof-ca-root-possession (upload, code, verification certificate, verify,
all through the management API) -> create-ca-intermediate --enroll (the group through the
API) -> create-device-cert -> the official device SDK provisions with that certificate against
the same `iotdps up`, connects to its hub and sends telemetry, read back through the API;
then the same admin commands the local data dir takes.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient
from click.testing import CliRunner

from iotdps.access import make_service_sas
from iotdps.cli.main import cli
from iotdps_testing.mgmt import ManagementServer
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.soft_tpm import SoftTpm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
logging.getLogger("azure").setLevel(logging.WARNING)

SRC = str(Path(__file__).resolve().parents[3] / "src")


def _env(server: ManagementServer, tmp_path: Path) -> dict[str, str]:
    return {
        "IOTDPS_CA_DIR": str(tmp_path / "ca"),
        "IOTDPS_CA_PASSPHRASE": "factory secret",
        "IOTDPS_SERVER_CA": str(server.ca_path),
        "IOTDPS_CONNECTION_STRING": server.connection_string(),
        "IOTDPS_DATA_DIR": str(tmp_path / "unused-local-data"),
    }


def _ok(runner: CliRunner, args: list[str], env: dict[str, str], code: int = 0) -> str:
    result = runner.invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_seed_001_round_trip_against_the_server(tmp_path: Path) -> None:
    """The factory side through the CLI against a real `iotdps up`, then the device side with
    the official SDK: provision with the minted certificate, connect to the assigned hub, send
    telemetry, and read it back through the management API's hub routes."""
    server = start_server(tmp_path)
    try:
        _seed_001(server, tmp_path)
    finally:
        server.stop()


def _seed_001(server: RunningServer, tmp_path: Path) -> None:
    runner = CliRunner()
    policies = json.loads((server.data_dir / "access-policies.json").read_text())["policies"]
    keys = {p["keyName"]: p["primaryKey"] for p in policies}
    management = f"{server.address}:8443"
    env = {
        "IOTDPS_CA_DIR": str(tmp_path / "ca"),
        "IOTDPS_CA_PASSPHRASE": "factory secret",
        "IOTDPS_SERVER_CA": str(server.server_ca_path),
        "IOTDPS_CONNECTION_STRING": (
            f"HostName={management};SharedAccessKeyName=provisioningserviceowner;"
            f"SharedAccessKey={keys['provisioningserviceowner']}"
        ),
        "IOTDPS_DATA_DIR": str(tmp_path / "unused-local-data"),
    }
    _ok(runner, ["create-ca-root", "--name", "root"], env)
    out = _ok(runner, ["proof-ca-root-possession", "--ca", "root"], env)
    assert "verified on the provisioning service" in out
    # Again: already verified with the same certificate, nothing to do.
    _ok(runner, ["proof-ca-root-possession", "--ca", "root"], env)
    hub = server.address  # the server's one hub shares the DPS host name
    out = _ok(
        runner, ["create-ca-intermediate", "--name", "factory-a", "--parent", "root", "--enroll", "--hub", hub], env
    )
    assert "enrollment group 'factory-a' created" in out
    device_dir = tmp_path / "dev"
    _ok(runner, ["create-device-cert", "--ca", "factory-a", "-r", "seed-dev-001", "--out", str(device_dir)], env)

    shown = json.loads(_ok(runner, ["group", "show", "factory-a"], env))
    assert shown["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"] == "CN=factory-a"
    assert shown["iotHubs"] == [hub]
    assert json.loads(_ok(runner, ["ca", "show", "root"], env))["properties"]["isVerified"] is True
    # Nothing went to the local data dir: the commands talked to the server only.
    assert not (tmp_path / "unused-local-data" / "iotdps.db").exists()

    # The device: the official SDK, X.509 with the minted bundle (leaf + intermediate).
    cert_file = next(device_dir.glob("*cert*.pem"))
    key_file = next(p for p in device_dir.iterdir() if p != cert_file and "key" in p.name)
    credential = X509(str(cert_file), str(key_file))
    provisioning = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id="seed-dev-001",
        id_scope=server.id_scope,
        x509=credential,
        server_verification_cert=server.server_ca,
    )
    result = provisioning.register()
    assert result.status == "assigned", server.log()
    assert result.registration_state.assigned_hub == hub
    device_id = result.registration_state.device_id
    assert device_id == "seed-dev-001"
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=credential, hostname=hub, device_id=device_id, server_verification_cert=server.server_ca
    )
    client.connect()
    try:
        client.send_message("seed-001 first telemetry")
    finally:
        client.shutdown()

    # Read it back through the management API (the hub's telemetry route, hub policy).
    token = make_service_sas(f"{hub}:8443", "iothubowner", keys["iothubowner"])
    url = f"https://{hub}:8443/devices/{device_id}/messages/events?limit=10"
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + 15
    while not events and time.monotonic() < deadline:
        answer = requests.get(url, headers={"Authorization": token}, verify=str(server.server_ca_path), timeout=30)
        assert answer.status_code == 200, answer.text
        events = answer.json()
        if not events:
            time.sleep(0.2)
    assert [e["body"] for e in events] == ["seed-001 first telemetry"]


def test_admin_commands_with_server(server: ManagementServer, tmp_path: Path) -> None:
    runner = CliRunner()
    env = _env(server, tmp_path)
    _ok(runner, ["settings", "set", "--id-scope", "0ne0000FFFF"], env)
    assert json.loads(_ok(runner, ["settings", "show"], env))["idScope"] == "0ne0000FFFF"
    _ok(runner, ["hub", "add", "hub-2.example.net", "--weight", "5"], env)
    _ok(runner, ["hub", "update", "hub-2.example.net", "--no-apply-allocation-policy"], env)
    assert "hub-2.example.net" in _ok(runner, ["hub", "list"], env)
    _ok(runner, ["enrollment", "create", "cli-sym-1", "--symmetric-key", "--device-id", "cli-dev"], env)
    shown = json.loads(_ok(runner, ["enrollment", "show", "cli-sym-1", "--show-keys"], env))
    keys = shown["attestation"]["symmetricKey"]
    assert keys["primaryKey"] and keys["secondaryKey"]
    _ok(runner, ["enrollment", "disable", "cli-sym-1"], env)
    again = json.loads(_ok(runner, ["enrollment", "show", "cli-sym-1", "--show-keys"], env))
    assert again["provisioningStatus"] == "disabled" and again["attestation"]["symmetricKey"] == keys
    assert "cli-sym-1" in _ok(runner, ["enrollment", "list"], env)
    explained = _ok(  # disabled: explain refuses, exit 1
        runner, ["explain", "--registration-id", "cli-sym-1", "--symmetric-key", keys["primaryKey"]], env, code=1
    )
    assert "cli-sym-1" in explained and "disabled" in explained
    _ok(runner, ["enrollment", "delete", "cli-sym-1"], env)
    # A TPM enrollment and the explain of its EK, over the management API.
    tpm = SoftTpm(0)
    _ok(runner, ["enrollment", "create", "cli-tpm-1", "--endorsement-key", tpm.ek_b64], env)
    explained = _ok(  # the EK matches, but no storage root key is known: refused, exit 1
        runner, ["explain", "--registration-id", "cli-tpm-1", "--endorsement-key", tpm.ek_b64], env, code=1
    )
    assert "endorsement key matches" in explained
    wrong = _ok(
        runner, ["explain", "--registration-id", "cli-tpm-1", "--endorsement-key", SoftTpm(1).ek_b64], env, code=1
    )
    assert "TPM_EK_MISMATCH" in wrong
    _ok(runner, ["enrollment", "delete", "cli-tpm-1"], env)
    _ok(runner, ["hub", "remove", "hub-2.example.net"], env)
    _ok(runner, ["registration", "list"], env)
    _ok(runner, ["refusals"], env)


def test_errors_are_one_line_and_exit_2(server: ManagementServer, tmp_path: Path) -> None:
    env = {**_env(server, tmp_path), "PYTHONPATH": SRC}
    missing = subprocess.run(
        [sys.executable, "-m", "iotdps", "enrollment", "show", "no-such-device"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3 and missing.stderr.strip() == "error: enrollment no-such-device not found"
    bad_key = {**env, "IOTDPS_CONNECTION_STRING": server.connection_string().rsplit("=", 2)[0] + "=AAAA"}
    refused = subprocess.run(
        [sys.executable, "-m", "iotdps", "enrollment", "list"],
        env=bad_key,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "SharedAccessSignature" in refused.stderr
    untrusted = {**env}
    del untrusted["IOTDPS_SERVER_CA"]
    no_ca = subprocess.run(
        [sys.executable, "-m", "iotdps", "hub", "list"],
        env=untrusted,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_ca.returncode == 2 and "--server-ca" in no_ca.stderr
