"""Certificate issuance end to end (issue 18) against a real `iotdps up`: a symmetric-key group
device sends a CSR over MQTT (our device client) and over HTTPS (raw requests), gets a chain
that `openssl verify` accepts against the trust bundle, connects to its hub with the issued
certificate and sends telemetry; renewal gives a new serial the hub accepts; bad CSRs are
refused with their reasons; the same through a real CFSSL, which, when down, fails the
registration with a recorded reason until a retry succeeds.

Configuration goes through the CLI on the server's data dir (local issuing CA from the CA
toolkit, trust bundle, group options), as an operator does it."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotdps.device import DeviceAgent, DeviceSettings, HubClient, SymmetricKey, X509Files
from iotdps.device.issued import IssuedFiles
from iotdps.pki.encoding import certs_to_pem, sha256_thumbprint
from iotdps.sas import derive_device_key, make_sas_token
from iotdps.secret import Secret
from iotdps_testing.cfssl import CfsslServer, running_cfssl
from iotdps_testing.issuance import csr_b64, make_csr, openssl_verify
from iotdps_testing.issued_devices import register_https
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

P25, P21 = "2025-07-01-preview", "2021-11-01-preview"


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("issuance-e2e")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "toolkit-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "fleet-root")
        server.cli("issuing-ca", "add-local", "factory-ca", "--ca", "fleet-root")
        server.cli("trust-bundle", "set", "fleet-roots", "--cert", str(tmp / "ca" / "fleet-root.cert.pem"))
        server.cli(
            "group", "create", "issuing", "--symmetric-key",
            "--issuing-ca", "factory-ca", "--cert-validity-days", "7", "--trust-bundle", "fleet-roots",
        )  # fmt: skip
        yield server
    finally:
        server.stop()


def _group_key(dps: RunningServer, group: str = "issuing") -> str:
    return dps.symmetric_keys("group", group)[0]


def _bundle_pem(dps: RunningServer) -> bytes:
    doc = dps.cli_json("trust-bundle", "show", "fleet-roots")
    return "".join(c["certificate"].replace("\r\n", "\n") for c in doc["certificates"]).encode()


def _chain(state: dict[str, Any]) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in state["issuedCertificateChain"]]


def test_mqtt_device_client_gets_a_certificate_uses_it_and_renews(dps: RunningServer, tmp_path: Path) -> None:
    key = derive_device_key(_group_key(dps), "issued-mqtt-1")
    settings = DeviceSettings(
        dps.address,
        dps.id_scope,
        "issued-mqtt-1",
        SymmetricKey(Secret(key)),
        tmp_path / "state.json",
        ca_pem=dps.server_ca,
        issue_certificate=True,
    )
    files = IssuedFiles(settings.state_file)

    async def run() -> tuple[int, int]:
        agent = DeviceAgent(settings)
        client = await agent.start()
        first = files.leaf()
        assert first is not None and agent.assignment is not None
        await client.send_telemetry('{"n": 1}', {})
        client = await agent.renew(via="dps")  # a new CSR: a new certificate, and the hub takes it
        await client.send_telemetry('{"n": 2}', {})
        second = files.leaf()
        assert second is not None
        await agent.stop()
        # The next start uses the cache and the issued certificate, without provisioning.
        again = DeviceAgent(settings)
        await again.start()
        assert again.provisioned == 0
        await again.stop()
        return first.serial_number, second.serial_number

    first, second = asyncio.run(run())
    assert first != second
    chain = x509.load_pem_x509_certificates(files.chain_file.read_bytes())
    verdict = openssl_verify(tmp_path, chain, files.bundle_file.read_bytes())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert (files.key_file.stat().st_mode & 0o777) == 0o600
    record = dps.registration("issued-mqtt-1")
    assert record.trust_bundle_id == "fleet-roots" and record.trust_bundle_version == 1
    assert record.issued_certificate == sha256_thumbprint(chain[0])
    listed = dps.cli_json("certificate", "list", "--registration-id", "issued-mqtt-1", "--json")
    assert [int(c["serialNumber"], 16) for c in listed] == [second, first]
    assert len(dps.telemetry(record.assigned_hub, "issued-mqtt-1")) == 2


def test_raw_https_registration_then_hub_with_the_issued_certificate(dps: RunningServer, tmp_path: Path) -> None:
    rid = "issued-https-1"
    key = derive_device_key(_group_key(dps), rid)
    device_key = ec.generate_private_key(ec.SECP256R1())
    response = register_https(dps, rid, key, {"csr": csr_b64(make_csr(rid, device_key))})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["status"] == "assigned"
    state = doc["registrationState"]
    chain = _chain(state)
    verdict = openssl_verify(tmp_path, chain, _bundle_pem(dps))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert chain[0].not_valid_after_utc - chain[0].not_valid_before_utc <= dt.timedelta(days=7, minutes=10)
    assert state["trustBundle"]["id"] == "fleet-roots"
    cert_file, key_file = tmp_path / "device.pem", tmp_path / "device.key"
    cert_file.write_bytes(certs_to_pem(chain))
    key_file.write_bytes(
        device_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )

    async def hub() -> None:
        client = HubClient(
            state["assignedHub"], state["deviceId"], X509Files(cert_file, key_file), ca_pem=dps.server_ca
        )
        await client.connect()
        await client.send_telemetry('{"via": "https"}', {})
        await client.close()

    asyncio.run(hub())
    assert len(dps.telemetry(state["assignedHub"], rid)) == 1
    # The status lookup answers the record, never the issued chain (wire doc 10.1).
    token = make_sas_token(dps.id_scope, rid, key, int(time.time()) + 600)
    lookup = requests.post(
        f"https://{dps.address}/{dps.id_scope}/registrations/{rid}?api-version={P25}",
        json={"registrationId": rid},
        headers={"Authorization": token},
        verify=str(dps.server_ca_path),
        timeout=30,
    )
    assert lookup.status_code == 200 and lookup.json()["status"] == "assigned"
    assert "issuedCertificateChain" not in lookup.json() and "trustBundle" not in lookup.json()
    # The 2021-11-01-preview shape: PEM and the bundle.
    other = register_https(dps, rid, key, {"clientCertificateCsr": csr_b64(make_csr(rid))}, api_version=P21).json()[
        "registrationState"
    ]
    assert other["issuedClientCertificate"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    # An api-version without a CSR field cannot satisfy a group that requires one.
    plain = register_https(dps, rid, key, {}, api_version="2019-03-31")
    assert plain.status_code == 400 and plain.json()["errorCode"] == 400024


def test_bad_csrs_are_refused_with_their_reasons(dps: RunningServer) -> None:
    rid = "issued-bad-1"
    key = derive_device_key(_group_key(dps), rid)
    der = bytearray(base64.b64decode(csr_b64(make_csr(rid))))
    der[-3] ^= 0x01
    ca = (x509.BasicConstraints(ca=True, path_length=None), True)
    cases = {
        "CSR_CN_MISMATCH": csr_b64(make_csr("someone-else")),
        "CSR_BAD_SIGNATURE": base64.b64encode(bytes(der)).decode(),
        "CSR_REQUESTS_CA": csr_b64(make_csr(rid, extensions=[ca])),
        "CSR_MALFORMED": "bm90IGEgQ1NS",
        "CSR_KEY_NOT_ACCEPTED": csr_b64(make_csr(rid, ec.generate_private_key(ec.SECP521R1()))),
    }
    for reason, csr in cases.items():
        response = register_https(dps, rid, key, {"csr": csr})
        assert response.status_code == 400, (reason, response.text)
    reasons = {r.reason for r in dps.refusals(rid)}
    assert set(cases) <= reasons
    assert dps.registration(rid) is None  # nothing registered, nothing issued
    assert dps.cli_json("certificate", "list", "--registration-id", rid, "--json") == []
    # A CSR on the status lookup is refused.
    token = make_sas_token(dps.id_scope, rid, key, int(time.time()) + 600)
    lookup = requests.post(
        f"https://{dps.address}/{dps.id_scope}/registrations/{rid}?api-version={P25}",
        json={"registrationId": rid, "csr": csr_b64(make_csr(rid))},
        headers={"Authorization": token},
        verify=str(dps.server_ca_path),
        timeout=30,
    )
    assert lookup.status_code == 400


@pytest.fixture(scope="module")
def cfssl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CfsslServer]:
    with running_cfssl(tmp_path_factory.mktemp("cfssl-e2e"), expiry_hours=24) as server:
        yield server


def test_cfssl_issuer_down_then_retry(dps: RunningServer, cfssl: CfsslServer, tmp_path: Path) -> None:
    (tmp_path / "auth.hex").write_text(cfssl.auth_key)
    (tmp_path / "chain.pem").write_bytes(certs_to_pem(list(cfssl.ca_chain)))
    assert cfssl.tls_ca is not None
    (tmp_path / "tls.pem").write_bytes(certs_to_pem([cfssl.tls_ca]))
    dps.cli(
        "issuing-ca", "add-cfssl", "cfssl-ca", "--url", cfssl.url, "--profile", "device",
        "--auth-key-file", str(tmp_path / "auth.hex"), "--ca-chain", str(tmp_path / "chain.pem"),
        "--tls-ca", str(tmp_path / "tls.pem"), "--timeout", "3",
    )  # fmt: skip
    dps.cli("group", "create", "via-cfssl", "--symmetric-key", "--issuing-ca", "cfssl-ca", "--cert-validity-days", "1")
    rid = "cfssl-dev-1"
    key = derive_device_key(_group_key(dps, "via-cfssl"), rid)
    cfssl.stop()
    try:
        down = register_https(dps, rid, key, {"csr": csr_b64(make_csr(rid))})
    finally:
        cfssl.start()
    assert down.status_code == 200 and down.json()["status"] == "failed", down.text
    assert down.json()["registrationState"]["errorCode"] == 503230
    assert "ISSUANCE_CA_UNREACHABLE" in {r.reason for r in dps.refusals(rid)}
    retry = register_https(dps, rid, key, {"csr": csr_b64(make_csr(rid))})
    assert retry.status_code == 200 and retry.json()["status"] == "assigned", retry.text
    chain = _chain(retry.json()["registrationState"])
    assert chain[1] == cfssl.issuing.certificate
    verdict = openssl_verify(tmp_path, chain, [cfssl.root.certificate])
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert [c["certificateAuthorityKind"] for c in listed] == ["cfssl"]
