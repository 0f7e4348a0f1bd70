"""Registration records show a revocation as soon as its CRL is uploaded, through the CLI against
a running `iotdps up` (issue 20).

The factory with the CLI's CA toolkit: root (verified by proof of possession), line-1 and line-2
under it, each with its enrollment group; three devices provisioned by the official device SDK.
Then `iotdps revoke --intermediate line-1` and `iotdps crl upload root`: line-1's device shows
the revocation in `registration show` and `registration list --revoked` at once, with no
registration attempt; line-2's do not. Then one device of line-2 revoked from its certificate
file: only its record joins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from click.testing import CliRunner

from iotdps.cli.main import cli
from iotdps.pki.encoding import load_certificates, sha256_thumbprint
from iotdps_testing.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
logging.getLogger("azure").setLevel(logging.WARNING)


def _ok(runner: CliRunner, args: list[str], env: dict[str, str], code: int = 0) -> str:
    result = runner.invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def _provision(server: RunningServer, device_dir: Path, rid: str) -> None:
    cert_file = next(device_dir.glob("*cert*.pem"))
    key_file = next(p for p in device_dir.iterdir() if p != cert_file and "key" in p.name)
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id=rid,
        id_scope=server.id_scope,
        x509=X509(str(cert_file), str(key_file)),
        server_verification_cert=server.server_ca,
    )
    assert client.register().status == "assigned", server.log()


def test_a_revocation_shows_on_the_records_as_soon_as_its_crl_is_uploaded(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        _scenario(server, tmp_path)
    finally:
        server.stop()


def _scenario(server: RunningServer, tmp_path: Path) -> None:
    runner = CliRunner()
    policies = json.loads((server.data_dir / "access-policies.json").read_text())["policies"]
    key = next(p["primaryKey"] for p in policies if p["keyName"] == "provisioningserviceowner")
    env = {
        "IOTDPS_CA_DIR": str(tmp_path / "ca"),
        "IOTDPS_CA_PASSPHRASE": "factory secret",
        "IOTDPS_SERVER_CA": str(server.server_ca_path),
        "IOTDPS_CONNECTION_STRING": (
            f"HostName={server.address}:8443;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={key}"
        ),
        "IOTDPS_DATA_DIR": str(tmp_path / "unused-local-data"),
    }
    _ok(runner, ["create-ca-root", "--name", "root"], env)
    _ok(runner, ["proof-ca-root-possession", "--ca", "root"], env)
    hub = server.address
    for line in ("line-1", "line-2"):
        _ok(runner, ["create-ca-intermediate", "--name", line, "--parent", "root", "--enroll", "--hub", hub], env)
    devices = {"l1-a": "line-1", "l2-a": "line-2", "l2-b": "line-2"}
    for rid, line in devices.items():
        _ok(runner, ["create-device-cert", "--ca", line, "-r", rid, "--out", str(tmp_path / rid)], env)
        _provision(server, tmp_path / rid, rid)

    def revoked() -> dict[str, dict[str, object]]:
        listed = json.loads(_ok(runner, ["registration", "list", "--revoked", "--json"], env))
        return {r["registrationId"]: r["revocation"] for r in listed}

    assert revoked() == {}
    assert "revocation" not in json.loads(_ok(runner, ["registration", "show", "l1-a"], env))

    # line-1's intermediate revoked by the root; the root's CRL handed to the service.
    out = _ok(runner, ["revoke", "--intermediate", "line-1", "--reason", "keyCompromise"], env)
    assert "revoked CN=line-1" in out, out
    _ok(runner, ["crl", "upload", "root", str(tmp_path / "ca" / "crl" / "root.crl.pem")], env)
    shown = json.loads(_ok(runner, ["registration", "show", "l1-a"], env))
    line1 = (tmp_path / "ca" / "line-1.cert.pem").read_text()
    thumbprint = sha256_thumbprint(load_certificates(line1)[0])
    assert shown["revocation"]["by"] == f"ca:{thumbprint}"  # line-1 is not an uploaded CA: its thumbprint
    assert shown["revocation"]["reason"] == "keyCompromise" and shown["revocation"]["revoked"] is True
    assert shown["status"] == "assigned"  # no registration attempt needed
    assert list(revoked()) == ["l1-a"]
    table = _ok(runner, ["registration", "list"], env)
    assert "keyCompromise" in next(line for line in table.splitlines() if "l1-a" in line)
    assert "keyCompromise" not in next(line for line in table.splitlines() if "l2-a" in line)

    # One device of line-2, from its certificate file: line-2's CRL, line-2 uploaded to hold it.
    _ok(runner, ["ca", "upload", "line-2", str(tmp_path / "ca" / "line-2.cert.pem")], env)
    l2b = next((tmp_path / "l2-b").glob("*cert*.pem"))
    _ok(runner, ["revoke", str(l2b), "--reason", "superseded"], env)
    _ok(runner, ["crl", "upload", "line-2", str(tmp_path / "ca" / "crl" / "line-2.crl.pem")], env)
    now = revoked()
    assert sorted(now) == ["l1-a", "l2-b"]
    assert now["l2-b"]["by"] == "leaf" and now["l2-b"]["reason"] == "superseded"
