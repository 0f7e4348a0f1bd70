"""The CLI against a running server: seed 001's round trip and the admin commands with --server.

create-ca-root -> proof-ca-root-possession (upload, code, verification certificate, verify,
all through the management API) -> create-ca-intermediate --enroll (the group through the
API) -> create-device-cert; then the same admin commands the local data dir takes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from iotdps.cli.main import cli
from iotdps_testing.mgmt import ManagementServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SRC = str(Path(__file__).resolve().parents[3] / "src")


def _env(server: ManagementServer, tmp_path: Path) -> dict[str, str]:
    return {
        "IOTDPS_CA_DIR": str(tmp_path / "ca"),
        "IOTDPS_CA_PASSPHRASE": "factory secret",
        "IOTDPS_SERVER_CA": str(server.ca_path),
        "IOTDPS_CONNECTION_STRING": server.connection_string(),
        "IOTDPS_DATA_DIR": str(tmp_path / "unused-local-data"),
    }


def _ok(runner: CliRunner, args: list[str], env: dict[str, str]) -> str:
    result = runner.invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_seed_001_round_trip_against_the_server(server: ManagementServer, tmp_path: Path) -> None:
    runner = CliRunner()
    env = _env(server, tmp_path)
    _ok(runner, ["create-ca-root", "--name", "root"], env)
    trust_before = server.trust_changes
    out = _ok(runner, ["proof-ca-root-possession", "--ca", "root"], env)
    assert "verified on the provisioning service" in out
    assert server.trust_changes > trust_before
    # Again: already verified with the same certificate, nothing to do.
    _ok(runner, ["proof-ca-root-possession", "--ca", "root"], env)

    out = _ok(
        runner,
        ["create-ca-intermediate", "--name", "factory-a", "--parent", "root", "--enroll", "--hub", "hub-1.example.net"],
        env,
    )
    assert "enrollment group 'factory-a' created" in out
    _ok(runner, ["create-device-cert", "--ca", "factory-a", "-r", "seed-dev-001", "--out", str(tmp_path / "dev")], env)
    assert any((tmp_path / "dev").iterdir())

    shown = json.loads(_ok(runner, ["group", "show", "factory-a"], env))
    assert shown["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"] == "CN=factory-a"
    assert shown["iotHubs"] == ["hub-1.example.net"]
    cas = _ok(runner, ["ca", "show", "root"], env)
    assert json.loads(cas)["properties"]["isVerified"] is True
    # Nothing went to the local data dir: the commands talked to the server only.
    assert not (tmp_path / "unused-local-data" / "iotdps.db").exists()


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
    explained = _ok(runner, ["explain", "--registration-id", "cli-sym-1", "--symmetric-key", keys["primaryKey"]], env)
    assert "cli-sym-1" in explained and "disabled" in explained
    _ok(runner, ["enrollment", "delete", "cli-sym-1"], env)
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
    assert missing.returncode == 2 and missing.stderr.strip() == "error: enrollment no-such-device not found"
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
