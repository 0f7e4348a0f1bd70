"""Which credentials open the hub after certificate issuance (issue 18), against a real
`iotdps up` over real TLS, with our device client: the issuance policy's
`keepExistingCredential`, set through the CLI as an operator does.

* Off (the default): a symmetric-key device that received a certificate is refused on its hub
  with its SAS token and accepted with the certificate.
* On: both work, for a symmetric-key device (its SAS token) and an X.509 device (its own
  certificate).
* A device connected with its SAS token when it registers with a CSR: under "on" that
  connection stays (the kept key is still accepted); under "off" it is closed at once
  (tests/attack/test_issuance_device.py).
* Turned off again (`group|enrollment update --no-keep-existing-credential`): the device's next
  registration takes the old credential away; the certificate it was issued before is replaced
  by the new one.
* `iotdps registration show` (local, text and --json, and against --server) and `registration
  list` show the issued certificate and the trust bundle the device received; `iotdps device
  show` shows the issued thumbprints beside the kept credential.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from iotdps.device import DeviceAgent, DeviceSettings, HubClient, SymmetricKey, X509Files
from iotdps.device.credentials import Credential
from iotdps.device.issued import IssuedFiles, new_key_and_csr
from iotdps.device.provision import provision
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps.timestamps import format_time
from iotdps_testing.devcerts import self_signed_device
from iotdps_testing.issued_devices import hub_accepts
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

MGMT_PORT = 8443


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("keep-credential")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "keep-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "keep-root")
        server.cli("issuing-ca", "add-local", "factory-ca", "--ca", "keep-root")
        server.cli("trust-bundle", "set", "fleet-roots", "--cert", str(tmp / "ca" / "keep-root.cert.pem"))
        server.cli("group", "create", "issued-only", "--symmetric-key", "--issuing-ca", "factory-ca",
                   "--trust-bundle", "fleet-roots")  # fmt: skip
        server.cli("group", "create", "kept", "--symmetric-key", "--issuing-ca", "factory-ca",
                   "--keep-existing-credential")  # fmt: skip
        yield server
    finally:
        server.stop()


def _sas(dps: RunningServer, group: str, rid: str) -> SymmetricKey:
    return SymmetricKey(Secret(derive_device_key(dps.symmetric_keys("group", group)[0], rid)))


def _agent(dps: RunningServer, rid: str, credential: Credential, tmp: Path) -> tuple[DeviceAgent, IssuedFiles]:
    settings = DeviceSettings(
        dps.address, dps.id_scope, rid, credential, tmp / f"{rid}.json", ca_pem=dps.server_ca, issue_certificate=True
    )
    return DeviceAgent(settings), IssuedFiles(settings.state_file)


def _issued(files: IssuedFiles) -> X509Files:
    return X509Files(files.chain_file, files.key_file)


def _keep_copy(files: IssuedFiles, tmp: Path, name: str) -> X509Files:
    """The device's current issued certificate and key, copied before a renewal replaces them."""
    chain, key = tmp / f"{name}.chain.pem", tmp / f"{name}.key.pem"
    shutil.copyfile(files.chain_file, chain)
    shutil.copyfile(files.key_file, key)
    return X509Files(chain, key)


def _start(agent: DeviceAgent) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        await agent.start()
        assert agent.assignment is not None
        await agent.stop()
        return agent.assignment.assigned_hub, agent.assignment.device_id

    return asyncio.run(go())


def _renew(agent: DeviceAgent) -> None:
    async def go() -> None:
        await agent.renew()
        await agent.stop()

    asyncio.run(go())


def test_off_a_symmetric_key_device_is_refused_with_its_sas_token(dps: RunningServer, tmp_path: Path) -> None:
    rid = "keep-off-1"
    key = _sas(dps, "issued-only", rid)
    agent, files = _agent(dps, rid, key, tmp_path)
    hub, device_id = _start(agent)  # provisioned with a CSR, connected with the issued certificate
    assert hub_accepts(dps, hub, device_id, _issued(files))
    assert not hub_accepts(dps, hub, device_id, key)
    assert f"device {device_id} authenticates with its issued certificate only, not a SAS token" in dps.log()
    shown = dps.cli_json("device", "show", "--hub", hub, "--device", device_id)["authentication"]
    leaf = x509.load_pem_x509_certificates(files.chain_file.read_bytes())[0]
    assert shown["type"] == "selfSigned" and shown["symmetricKey"] == {"primaryKey": False, "secondaryKey": False}
    assert shown["issuedThumbprints"] == [sha256_thumbprint(leaf), sha1_thumbprint(leaf)]


def test_on_both_work_and_turning_it_off_removes_the_key(dps: RunningServer, tmp_path: Path) -> None:
    dps.cli("group", "create", "kept-then-off", "--symmetric-key", "--issuing-ca", "factory-ca",
            "--keep-existing-credential")  # fmt: skip
    rid = "keep-sk-1"
    key = _sas(dps, "kept-then-off", rid)
    agent, files = _agent(dps, rid, key, tmp_path)
    hub, device_id = _start(agent)
    assert hub_accepts(dps, hub, device_id, key)
    assert hub_accepts(dps, hub, device_id, _issued(files))
    shown = dps.cli_json("device", "show", "--hub", hub, "--device", device_id)["authentication"]
    assert shown["type"] == "sas" and shown["symmetricKey"] == {"primaryKey": True, "secondaryKey": True}
    first = _keep_copy(files, tmp_path, "first")
    # The operator turns the option off: one setting, the rest of the policy stays.
    dps.cli("group", "update", "kept-then-off", "--no-keep-existing-credential")
    policy = dps.cli_json("group", "show", "kept-then-off")["clientCertificateIssuancePolicy"]
    assert policy["keepExistingCredential"] is False and policy["certificateAuthorityName"] == "factory-ca"
    assert hub_accepts(dps, hub, device_id, key)  # nothing changes before the device registers again
    _renew(agent)  # the next registration, with a new CSR
    assert not hub_accepts(dps, hub, device_id, key)
    assert not hub_accepts(dps, hub, device_id, first)  # the certificate issued before, replaced
    assert hub_accepts(dps, hub, device_id, _issued(files))


def test_an_x509_device_keeps_its_own_certificate_only_while_kept(dps: RunningServer, tmp_path: Path) -> None:
    rid = "keep-x509-1"
    own = self_signed_device(tmp_path, rid)
    dps.cli("enrollment", "create", rid, "--cert", str(own.cert_file), "--issuing-ca", "factory-ca",
            "--keep-existing-credential")  # fmt: skip
    own_files = X509Files(own.cert_file, own.key_file)
    agent, files = _agent(dps, rid, own_files, tmp_path)
    hub, device_id = _start(agent)
    assert hub_accepts(dps, hub, device_id, own_files)
    assert hub_accepts(dps, hub, device_id, _issued(files))
    dps.cli("enrollment", "update", rid, "--no-keep-existing-credential")
    _renew(agent)
    assert not hub_accepts(dps, hub, device_id, own_files)
    assert hub_accepts(dps, hub, device_id, _issued(files))
    shown = dps.cli_json("device", "show", "--hub", hub, "--device", device_id)["authentication"]
    assert shown["x509Thumbprint"] == {"primaryThumbprints": [], "secondaryThumbprints": []}


def _key_of(dps: RunningServer, policy: str) -> str:
    doc = json.loads((dps.data_dir / "access-policies.json").read_text())
    return str(next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy))


def test_registration_show_names_the_certificate_and_the_bundle(dps: RunningServer, tmp_path: Path) -> None:
    rid = "keep-show-1"
    agent, files = _agent(dps, rid, _sas(dps, "issued-only", rid), tmp_path)
    _start(agent)
    leaf = x509.load_pem_x509_certificates(files.chain_file.read_bytes())[0]
    expected = {
        "sha256Thumbprint": sha256_thumbprint(leaf),
        "serialNumber": format(leaf.serial_number, "X"),
        "notAfterUtc": format_time(leaf.not_valid_after_utc),
        "certificateAuthorityName": "factory-ca",
    }
    text = dps.cli("registration", "show", rid)
    as_json = dps.cli_json("registration", "show", rid, "--json")
    assert json.loads(text) == as_json  # the record is JSON either way
    assert f'"serialNumber": "{expected["serialNumber"]}"' in text
    assert as_json["issuedCertificate"] == expected
    assert (as_json["trustBundleId"], as_json["trustBundleVersion"]) == ("fleet-roots", 1)
    remote = [
        "--server", f"https://{dps.address}:{MGMT_PORT}", "--server-ca", str(dps.server_ca_path),
        "--policy", "provisioningserviceowner", "--key", _key_of(dps, "provisioningserviceowner"),
    ]  # fmt: skip
    over_api = dps.cli_json("registration", "show", rid, "--json", *remote)
    assert over_api["issuedCertificate"] == expected and over_api["trustBundleVersion"] == 1
    listed = dps.cli_json("registration", "list", "--group", "issued-only", "--json", *remote)
    mine = next(r for r in listed if r["registrationId"] == rid)
    assert mine["issuedCertificate"] == expected and mine["trustBundleId"] == "fleet-roots"


def test_on_a_connection_made_with_the_kept_key_stays_through_issuance(dps: RunningServer) -> None:
    rid = "keep-live-1"
    dps.cli("group", "create", "kept-later", "--symmetric-key", "--issuing-ca", "factory-ca", "--csr", "optional",
            "--keep-existing-credential")  # fmt: skip
    key = _sas(dps, "kept-later", rid)

    async def scenario() -> tuple[bool, str]:
        plain = await provision(dps.address, dps.id_scope, rid, key, ca_pem=dps.server_ca)  # no CSR: SAS
        client = HubClient(plain.assigned_hub, plain.device_id, key, ca_pem=dps.server_ca)
        await client.connect()
        _private, csr = new_key_and_csr(rid)
        issued = await provision(dps.address, dps.id_scope, rid, key, ca_pem=dps.server_ca, csr=csr)
        assert issued.issued_chain, "no certificate was issued"
        try:
            await asyncio.wait_for(client.wait_closed(), timeout=1.5)
        except TimeoutError:
            await client.send_telemetry('{"still": 1}', {})  # still open and working
            await client.close()
            return True, plain.device_id
        return False, plain.device_id

    stayed, device_id = asyncio.run(scenario())
    assert stayed, "the connection made with the kept SAS key was closed"
    assert f"device {device_id} disconnected: its identity changed" not in dps.log()
