"""A TPM device that gets a certificate at registration (issue 18): `iotdps device run --tpm
--csr` and the DeviceAgent on a real software TPM (swtpm through tpm2-pytss) against a real
`iotdps up` with a local issuing CA.

The device answers the TPM challenge over HTTPS with its CSR in the body, gets an
`issuedCertificateChain` that `openssl verify` accepts against the trust bundle it received,
connects to its hub with that certificate and sends telemetry. With keepExistingCredential off
(the default) the hub key the TPM imported from the second activation blob no longer opens the
hub; with it on, both do, and a renewal (a new CSR, the challenge again) gives a new serial.
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
from cryptography import x509

from iotdps.device import DeviceAgent, DeviceSettings, TpmCredential, X509Files
from iotdps.device.issued import IssuedFiles
from iotdps.device.tpm import Tpm
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.store import open_store
from iotdps_testing.issuance import openssl_verify
from iotdps_testing.issued_devices import hub_accepts
from iotdps_testing.server import SRC, RunningServer, start_server
from iotdps_testing.swtpm import Swtpm, running_swtpm

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("tpm-csr")
    running = start_server(tmp)
    running.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "tpm-csr-pass-1"})
    try:
        running.cli("create-ca-root", "--name", "tpm-root")
        running.cli("issuing-ca", "add-local", "tpm-issuer", "--ca", "tpm-root")
        running.cli("trust-bundle", "set", "tpm-roots", "--cert", str(tmp / "ca" / "tpm-root.cert.pem"))
        yield running
    finally:
        assert running.stop() == 0, running.log()


def _enroll(server: RunningServer, rid: str, swtpm: Swtpm, tmp: Path, *extra: str) -> None:
    ek_file = tmp / f"{rid}.ek.pub"
    ek_file.write_bytes(swtpm.ek_public)
    server.cli("enrollment", "create", rid, "--endorsement-key", str(ek_file), "--issuing-ca", "tpm-issuer",
               "--trust-bundle", "tpm-roots", *extra)  # fmt: skip


def device_run(server: RunningServer, swtpm: Swtpm, rid: str, state: Path, *extra: str) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "iotdps", "device", "run", "--tpm", "--tcti", swtpm.tcti, "--csr"]
    argv += ["--provisioning-host", server.address, "--id-scope", server.id_scope, "--registration-id", rid]
    argv += ["--ca", str(server.server_ca_path), "--state", str(state), *extra]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    return done.returncode, done.stdout, done.stderr


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def wait_for_telemetry(server: RunningServer, device_id: str, count: int) -> list[bytes]:
    async def read() -> list[bytes]:
        store = await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False)
        try:
            async with store.begin() as uow:
                return [m.body for m in await uow.telemetry.list(server.address, device_id)]
        finally:
            await store.close()

    deadline = time.monotonic() + 10
    bodies = asyncio.run(read())
    while time.monotonic() < deadline and len(bodies) < count:
        time.sleep(0.2)
        bodies = asyncio.run(read())
    return bodies


def _certificates(server: RunningServer, rid: str) -> list[dict[str, str]]:
    listed: list[dict[str, str]] = server.cli_json("certificate", "list", "--registration-id", rid, "--json")
    return listed


def test_device_run_tpm_csr_gets_a_certificate_and_the_tpm_key_no_longer_opens_the_hub(
    server: RunningServer, tmp_path: Path
) -> None:
    rid = "tpm-csr-1"
    state = tmp_path / f"{rid}.json"
    files = IssuedFiles(state)
    with running_swtpm(tmp_path / "tpm") as swtpm:
        _enroll(server, rid, swtpm, tmp_path)
        code, out, err = device_run(
            server, swtpm, rid, state, "--count", "2", "--interval", "0", "--message", "by-cert"
        )
        assert code == 0, err
        first = events(out)
        assert first[0] == {"event": "connected", "hub": server.address, "deviceId": rid, "provisioned": True}
        chain = x509.load_pem_x509_certificates(files.chain_file.read_bytes())
        assert first[1] == {
            "event": "certificate",
            "serial": format(chain[0].serial_number, "X"),
            "notAfter": chain[0].not_valid_after_utc.isoformat(),
        }
        assert [e["seq"] for e in first if e["event"] == "sent"] == [0, 1]
        # The chain verifies against the trust bundle the device was given, as a TLS peer would.
        verdict = openssl_verify(tmp_path, chain, files.bundle_file.read_bytes())
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert chain[0].subject.rfc4514_string() == f"CN={rid}"
        assert files.key_file.stat().st_mode & 0o777 == 0o600
        # Issued once, on the authenticated request: the challenge round trip issued nothing.
        listed = _certificates(server, rid)
        assert [int(c["serialNumber"], 16) for c in listed] == [chain[0].serial_number]
        record = server.registration(rid)
        assert record.status == "assigned" and record.attestation_type == "tpm"
        assert record.issued_certificate == sha256_thumbprint(chain[0])
        assert (record.trust_bundle_id, record.trust_bundle_version) == ("tpm-roots", 1)
        # The hub identity is the issued certificate alone: the TPM's imported hub key (the
        # second activation blob) is refused, the certificate accepted.
        shown = server.cli_json("device", "show", "--hub", server.address, "--device", rid)["authentication"]
        assert shown["type"] == "selfSigned"
        assert shown["issuedThumbprints"] == [sha256_thumbprint(chain[0]), sha1_thumbprint(chain[0])]
        with Tpm(swtpm.tcti) as tpm:
            assert not hub_accepts(server, server.address, rid, TpmCredential(tpm))
        assert f"device {rid} authenticates with its issued certificate only, not a SAS token" in server.log()
        assert hub_accepts(server, server.address, rid, X509Files(files.chain_file, files.key_file))
        # The next start goes to the cached hub with the certificate, without DPS.
        code, out, err = device_run(server, swtpm, rid, state, "--count", "1", "--message", "again")
        assert code == 0, err
        assert events(out)[0]["provisioned"] is False
    assert server.registration(rid).operation_id == record.operation_id
    assert len(_certificates(server, rid)) == 1
    bodies = wait_for_telemetry(server, rid, 4)
    assert bodies == [b"by-cert", b"by-cert", b'{"probe": 1}', b"again"]
    # The state file stays secret-free; the key sits beside it, owner-only.
    assert not {"key", "authenticationKey", "privateKey"} & set(json.loads(state.read_text()))


def test_agent_kept_tpm_key_and_renewal(server: RunningServer, tmp_path: Path) -> None:
    rid = "tpm-csr-kept"
    with running_swtpm(tmp_path / "tpm") as swtpm:
        _enroll(server, rid, swtpm, tmp_path, "--keep-existing-credential")
        settings = DeviceSettings(
            server.address,
            server.id_scope,
            rid,
            TpmCredential(Tpm(swtpm.tcti)),
            tmp_path / "state.json",
            ca_pem=server.server_ca,
            issue_certificate=True,
        )
        files = IssuedFiles(settings.state_file)

        async def run() -> tuple[int, int, int]:
            agent = DeviceAgent(settings)
            client = await agent.start()
            first = files.leaf()
            assert first is not None
            await client.send_telemetry("first", {})
            client = await agent.renew(via="dps")  # a new CSR through the TPM challenge again
            await client.send_telemetry("renewed", {})
            second = files.leaf()
            assert second is not None
            await agent.stop()
            return first.serial_number, second.serial_number, agent.provisioned

        first, second, provisioned = asyncio.run(run())
        assert first != second and provisioned == 2
        assert [int(c["serialNumber"], 16) for c in _certificates(server, rid)] == [second, first]
        # Kept: the TPM's hub key opens the hub beside the (new) certificate.
        with Tpm(swtpm.tcti) as tpm:
            assert hub_accepts(server, server.address, rid, TpmCredential(tpm))
        assert hub_accepts(server, server.address, rid, X509Files(files.chain_file, files.key_file))
    chain = x509.load_pem_x509_certificates(files.chain_file.read_bytes())
    verdict = openssl_verify(tmp_path, chain, files.bundle_file.read_bytes())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert wait_for_telemetry(server, rid, 4)[:2] == [b"first", b"renewed"]


def test_csr_without_an_issuance_policy_is_one_error_line(server: RunningServer, tmp_path: Path) -> None:
    rid = "tpm-csr-nopolicy"
    with running_swtpm(tmp_path / "tpm") as swtpm:
        server.cli("enrollment", "create", rid, "--endorsement-key", base64.b64encode(swtpm.ek_public).decode())
        code, out, err = device_run(server, swtpm, rid, tmp_path / "state.json")
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [
        "error: provisioning refused: HTTP 400 Device sent CSR but it is not configured in the service"
    ]
    refusal = server.refusals(rid)[0]
    assert refusal.reason == "CSR_NOT_EXPECTED" and refusal.attestation_type == "tpm"
    assert server.registration(rid) is None and _certificates(server, rid) == []
    assert not (tmp_path / "state.json").exists() and not IssuedFiles(tmp_path / "state.json").key_file.exists()
