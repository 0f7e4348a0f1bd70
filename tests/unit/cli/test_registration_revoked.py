"""`iotdps registration show|list [--revoked]` on a local SQLite data dir (no server): the CA
toolkit's CLI makes root -> line-1 / line-2 and a device of each line, the devices register
through the service on the same database, then `iotdps revoke --intermediate line-1` and
`iotdps crl upload root`: line-1's record shows the revocation at once, line-2's does not."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from iotdps.attestation.x509 import evidence_from_chain
from iotdps.cli.main import cli
from iotdps.paths import default_dsn
from iotdps.pki.encoding import load_certificates
from iotdps.provisioning.registration import RegistrationRequest
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.trust import trust_anchors
from iotdps.store import open_store


def test_registration_list_revoked_on_a_local_data_dir(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {
        "IOTDPS_DATA_DIR": str(tmp_path / "data"),
        "IOTDPS_CA_DIR": str(tmp_path / "ca"),
        "IOTDPS_CA_PASSPHRASE": "factory secret",
    }

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    run("settings", "set", "--id-scope", "0ne00LOCAL")
    run("hub", "add", "hub-a.local")
    run("create-ca-root", "--name", "root")
    run("ca", "upload", "root", str(tmp_path / "ca" / "root.cert.pem"), "--verified")
    run("group", "create", "fleet", "--ca-ref", "root")
    chains = {}
    for line, rid in (("line-1", "l1-a"), ("line-2", "l2-a")):
        run("create-ca-intermediate", "--name", line, "--parent", "root")
        run("create-device-cert", "--ca", line, "-r", rid, "--out", str(tmp_path / rid))
        chains[rid] = load_certificates(next((tmp_path / rid).glob("*cert*.pem")).read_bytes())

    async def register() -> None:
        store = await open_store(default_dsn(tmp_path / "data"))
        try:
            anchors = await trust_anchors(store)
            for rid, chain in chains.items():
                evidence = evidence_from_chain(chain, anchors, datetime.now(UTC))
                outcome = await ProvisioningService(store).register(RegistrationRequest("0ne00LOCAL", rid, evidence))
                assert outcome.record is not None and outcome.record.status == "assigned", outcome.message
        finally:
            await store.close()

    asyncio.run(register())
    assert json.loads(run("registration", "list", "--revoked", "--json")) == []

    run("revoke", "--intermediate", "line-1", "--reason", "cACompromise")
    run("crl", "upload", "root", str(tmp_path / "ca" / "crl" / "root.crl.pem"))
    listed = json.loads(run("registration", "list", "--revoked", "--json"))
    assert [r["registrationId"] for r in listed] == ["l1-a"]
    assert listed[0]["revocation"]["reason"] == "cACompromise"
    assert listed[0]["revocation"]["by"].startswith("ca:")
    assert "revocation" not in json.loads(run("registration", "show", "l2-a"))
    # Uploaded under its name, the revoked CA is named rather than given by thumbprint.
    run("ca", "upload", "line-1", str(tmp_path / "ca" / "line-1.cert.pem"))
    assert json.loads(run("registration", "show", "l1-a"))["revocation"]["by"] == "ca:line-1"
    table = run("registration", "list", "--revoked")
    assert "l1-a" in table and "ca:line-1 (cACompromise)" in table and "l2-a" not in table
