"""The admin CLI on a real SQLite data dir: CA proof of possession, groups, enrollments, hubs,
explain, registrations and refusals; errors are one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from certkit import issue
from click.testing import CliRunner

from iotdps.cli.main import cli

SRC = str(Path(__file__).resolve().parents[3] / "src")


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args), env={"IOTDPS_DATA_DIR": str(tmp_path / "data")}, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_admin_flow(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    valid = {"not_before": now - timedelta(days=1), "not_after": now + timedelta(days=30)}
    root = issue("root", ca=True, **valid)
    a = issue("A", root, ca=True, **valid)
    b = issue("B", root, ca=True, **valid)
    dev1, dev4 = issue("dev-1", a, **valid), issue("dev-4", b, **valid)

    run("settings", "set", "--id-scope", "0ne00CLI")
    run("hub", "add", "hub-a.local", "--weight", "2")
    assert "hub-a.local" in run("hub", "list")

    run("ca", "upload", "root", _write(tmp_path / "root.pem", root.pem))
    code = run("ca", "verification-code", "root").strip().splitlines()[0]
    run("ca", "verify", "root", _write(tmp_path / "ver.pem", issue(code, root, **valid).pem))
    assert "True" in run("ca", "list")
    assert json.loads(run("ca", "show", "root"))["properties"]["isVerified"] is True

    run("group", "create", "all", "--ca-ref", "root")
    run("group", "create", "factory-b", "--signing-cert", _write(tmp_path / "b.pem", b.pem), "--disabled")
    listing = run("group", "list")
    assert "factory-b" in listing and "disabled" in listing

    out4 = run("explain", "--cert", _write(tmp_path / "dev4.pem", dev4.pem + b.pem), code=1)  # refused: exit 1
    assert "factory-b, disabled -> refuse" in out4 and "GROUP_DISABLED" in out4
    out1 = run("explain", "--cert", _write(tmp_path / "dev1.pem", dev1.pem + a.pem))
    assert "all, enabled -> admit" in out1 and "hub: hub-a.local" in out1

    run("enrollment", "create", "sk-1", "--symmetric-key", "--hub", "hub-a.local", "--initial-twin", '{"tags":{"x":1}}')
    shown = json.loads(run("enrollment", "show", "sk-1"))
    assert shown["attestation"] == {"type": "symmetricKey", "symmetricKey": {}} and shown["initialTwin"]["tags"] == {
        "x": 1
    }
    key = json.loads(run("enrollment", "show", "sk-1", "--show-keys"))["attestation"]["symmetricKey"]["primaryKey"]
    assert "decision: admit" in run("explain", "--registration-id", "sk-1", "--symmetric-key", key)
    run("enrollment", "disable", "sk-1")
    assert "ENROLLMENT_DISABLED" in run("explain", "--registration-id", "sk-1", "--symmetric-key", key, code=1)
    run("enrollment", "enable", "sk-1")
    run("enrollment", "update", "sk-1", "--reprovision-policy", "never")
    assert json.loads(run("enrollment", "show", "sk-1"))["reprovisionPolicy"]["updateHubAssignment"] is False

    # A registration through the service on the same database, then the registration commands.
    import asyncio

    from iotdps.evidence import SasCredential
    from iotdps.paths import default_dsn
    from iotdps.provisioning.registration import RegistrationRequest
    from iotdps.provisioning.service import ProvisioningService
    from iotdps.sas import make_sas_token
    from iotdps.secret import Secret
    from iotdps.store import open_store

    async def register(rid: str, k: str) -> None:
        store = await open_store(default_dsn(tmp_path / "data"))
        try:
            token = make_sas_token("0ne00CLI", rid, k, int(now.timestamp()) + 600)
            await ProvisioningService(store).register(
                RegistrationRequest("0ne00CLI", rid, SasCredential(Secret(token)))
            )
        finally:
            await store.close()

    asyncio.run(register("sk-1", key))
    asyncio.run(register("nobody", key))
    assert json.loads(run("registration", "show", "sk-1"))["assignedHub"] == "hub-a.local"
    assert "sk-1" in run("registration", "list")
    assert "NO_ENROLLMENT" in run("refusals", "--registration-id", "nobody")
    run("registration", "delete", "sk-1")
    run("enrollment", "delete", "sk-1")
    run("group", "delete", "factory-b")
    run("hub", "remove", "hub-a.local")
    run("ca", "delete", "root")


def test_errors_are_one_line_exit_3_not_found_2_bad_input(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "IOTDPS_DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "enrollment", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.strip() == "error: enrollment nope not found"
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "group", "create", "g", "--symmetric-key", "--ca-ref", "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and "give exactly one of" in result.stderr and "Traceback" not in result.stderr


def test_issuance_policy_options_create_and_amend(run) -> None:  # type: ignore[no-untyped-def]
    """`--[no-]keep-existing-credential` beside the other issuance options: `create` makes a
    policy with --issuing-ca; `update` amends the policy there, one setting at a time."""

    def policy(*args: str) -> dict[str, object]:
        return json.loads(run(*args))["clientCertificateIssuancePolicy"]  # type: ignore[no-any-return]

    run("group", "create", "fleet", "--symmetric-key", "--issuing-ca", "factory-ca", "--cert-validity-days", "9")
    assert policy("group", "show", "fleet")["keepExistingCredential"] is False  # the secure default
    run("group", "update", "fleet", "--keep-existing-credential")
    assert policy("group", "show", "fleet") == {
        "certificateAuthorityName": "factory-ca",
        "validityInDays": 9,  # amended, not reset
        "acceptedKeyTypes": ["ecP256", "ecP384", "rsa2048", "rsa3072", "rsa4096"],
        "csrRequirement": "required",
        "keepExistingCredential": True,
    }
    run("group", "update", "fleet", "--no-keep-existing-credential", "--csr", "optional")
    amended = policy("group", "show", "fleet")
    assert amended["keepExistingCredential"] is False and amended["csrRequirement"] == "optional"
    # Each change is in the audit trail, through the usual write path.
    entries = [json.loads(line) for line in run("audit", "list", "--target", "group/fleet", "--json").splitlines()]
    assert [e["action"] for e in entries] == ["group.create", "group.update", "group.update"]
    run("enrollment", "create", "dev-1", "--symmetric-key", "--issuing-ca", "factory-ca", "--keep-existing-credential")
    assert policy("enrollment", "show", "dev-1")["keepExistingCredential"] is True
    # Without a policy to amend, the option needs --issuing-ca: a usage error, nothing written.
    out = run("group", "create", "bare", "--symmetric-key", "--keep-existing-credential", code=2)
    assert "--issuing-ca" in out
    run("group", "create", "plain", "--symmetric-key")
    assert "--issuing-ca" in run("group", "update", "plain", "--no-keep-existing-credential", code=2)
    assert json.loads(run("group", "show", "plain")).get("clientCertificateIssuancePolicy") is None
    assert "bare" not in run("group", "list")
