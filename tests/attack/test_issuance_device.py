"""What a device can send wrong in a register request that carries a CSR (issue 18), against a
real `iotdps up`, over HTTPS and over MQTT with a raw client: wrong types, oversized CSRs, weak
keys, names it may not have, CA rights, a CSR where none is configured, and the api-versions
that carry no CSR field (ignored, as before issuance existed). The certificate a device gets
carries only what the service decides: CN = registration id, no SAN or other subject name the
CSR asked for, no CA rights. After issuance, on the hub: the device's old SAS key no longer
opens it (the policy did not keep it), nor does another device's issued certificate, and a
connection it made with that key before is closed as soon as the certificate is issued."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotdps.device import HubClient, SymmetricKey, X509Files
from iotdps.device.credentials import Credential
from iotdps.device.mqtt import ConnectRefused
from iotdps.pki.encoding import certs_to_pem
from iotdps.sas import derive_device_key, make_sas_token
from iotdps.secret import Secret
from iotdps_testing.issuance import csr_b64, make_csr
from iotdps_testing.rawdps import DpsAnswer, open_raw_dps
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

P25, P21, SDK = "2025-07-01-preview", "2021-11-01-preview", "2019-03-31"


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("issuance-attack")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "attack-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "attack-root")
        server.cli("issuing-ca", "add-local", "attack-ca", "--ca", "attack-root")
        server.cli("group", "create", "issuing", "--symmetric-key", "--issuing-ca", "attack-ca")
        server.cli("group", "create", "plain", "--symmetric-key")
        yield server
    finally:
        server.stop()


def _key(dps: RunningServer, group: str, rid: str) -> str:
    return derive_device_key(dps.symmetric_keys("group", group)[0], rid)


def _https(dps: RunningServer, group: str, rid: str, body: Any, api_version: str = P25) -> requests.Response:
    token = make_sas_token(dps.id_scope, rid, _key(dps, group, rid), int(time.time()) + 600)
    return requests.put(
        f"https://{dps.address}/{dps.id_scope}/registrations/{rid}/register?api-version={api_version}",
        data=json.dumps(body) if not isinstance(body, bytes) else body,
        headers={"Authorization": token, "Content-Type": "application/json"},
        verify=str(dps.server_ca_path),
        timeout=30,
    )


def _mqtt_register(dps: RunningServer, group: str, rid: str, body: dict[str, Any], api_version: str) -> DpsAnswer:
    """CONNECT with `api_version` in the username, publish one register request; its answer."""
    token = make_sas_token(dps.id_scope, rid, _key(dps, group, rid), int(time.time()) + 600)

    async def exchange() -> DpsAnswer:
        async with open_raw_dps(dps, rid) as raw:
            assert await raw.connect(token, dps, api_version) == 0
            return await raw.register(body)

    return asyncio.run(exchange())


def test_wrong_types_and_sizes_are_400s(dps: RunningServer) -> None:
    rid = "attack-types-1"
    for body in (
        {"registrationId": rid, "csr": 12345},
        {"registrationId": rid, "csr": ["a"]},
        {"registrationId": rid, "csr": ""},
        {"registrationId": rid, "csr": "A" * 20000},  # past the CSR bound, inside the body bound
    ):
        response = _https(dps, "issuing", rid, body)
        assert response.status_code == 400, (str(body)[:80], response.text)
    assert dps.registration(rid) is None
    assert "CSR_TOO_LARGE" in {r.reason for r in dps.refusals(rid)}


def test_weak_keys_foreign_names_and_ca_rights_are_refused(dps: RunningServer) -> None:
    rid = "attack-names-1"
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key refused
    cert_sign = x509.KeyUsage(False, False, False, False, False, True, False, False, False)  # keyCertSign
    cases = {
        "CSR_KEY_NOT_ACCEPTED": make_csr(rid, weak),
        "CSR_CN_MISMATCH": make_csr("attack-names-2"),  # another device's name
        "CSR_REQUESTS_CA": make_csr(rid, extensions=[(cert_sign, True)]),
    }
    for reason, csr in [*cases.items(), ("CSR_CN_MISMATCH", make_csr(None))]:  # no CN at all
        response = _https(dps, "issuing", rid, {"registrationId": rid, "csr": csr_b64(csr)})
        assert response.status_code == 400, (reason, response.text)
    assert set(cases) <= {r.reason for r in dps.refusals(rid)}
    assert dps.cli_json("certificate", "list", "--registration-id", rid, "--json") == []


def test_the_certificate_carries_only_what_the_service_decides(dps: RunningServer) -> None:
    rid = "attack-extras-1"
    sans = x509.SubjectAlternativeName([x509.DNSName("bank.example"), x509.DNSName("localhost")])
    eku = x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CODE_SIGNING])
    csr = make_csr(
        rid,
        extensions=[(sans, False), (eku, False), (x509.BasicConstraints(ca=False, path_length=None), True)],
        extra_names=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp")],
    )
    response = _https(dps, "issuing", rid, {"registrationId": rid, "csr": csr_b64(csr)})
    assert response.status_code == 200, response.text
    chain = [
        x509.load_der_x509_certificate(base64.b64decode(c))
        for c in response.json()["registrationState"]["issuedCertificateChain"]
    ]
    leaf = chain[0]
    assert leaf.subject.rfc4514_string() == f"CN={rid}"
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_csr_where_none_is_configured_and_versions_without_the_field(dps: RunningServer) -> None:
    rid = "attack-plain-1"
    csr = csr_b64(make_csr(rid))
    refused = _https(dps, "plain", rid, {"registrationId": rid, "csr": csr})
    assert refused.status_code == 400 and refused.json()["errorCode"] == 400025
    assert "CSR_NOT_EXPECTED" in {r.reason for r in dps.refusals(rid)}
    # The SDK's api-version has no CSR field: `csr` is ignored, as before issuance existed.
    ignored = _https(dps, "plain", rid, {"registrationId": rid, "csr": csr}, api_version=SDK)
    assert ignored.status_code == 200 and ignored.json()["status"] == "assigned"
    assert "issuedCertificateChain" not in ignored.json()["registrationState"]
    # 2021-11-01-preview reads clientCertificateCsr, not csr.
    other_field = _https(dps, "issuing", "attack-plain-2", {"registrationId": "attack-plain-2", "csr": csr}, P21)
    assert other_field.status_code == 400 and other_field.json()["errorCode"] == 400024  # CSR required


def test_mqtt_edge_reads_the_field_of_its_api_version(dps: RunningServer) -> None:
    rid = "attack-mqtt-1"
    answer = _mqtt_register(dps, "issuing", rid, {"registrationId": rid, "csr": 7}, P25)
    assert answer.status == 400 and "csr" in answer.body["message"]
    good = {"registrationId": rid, "clientCertificateCsr": csr_b64(make_csr(rid))}
    answer = _mqtt_register(dps, "issuing", rid, good, P21)
    assert answer.status == 200, answer
    assert answer.body["registrationState"]["issuedClientCertificate"].startswith("-----BEGIN CERTIFICATE-----")
    bad = {"registrationId": rid, "clientCertificateCsr": csr_b64(make_csr("someone"))}
    answer = _mqtt_register(dps, "issuing", rid, bad, P21)
    assert answer.status == 400 and answer.body["errorCode"] == 400022


def _issued_files(directory: Path, rid: str, response: requests.Response, key: ec.EllipticCurvePrivateKey) -> X509Files:
    state = response.json()["registrationState"]
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in state["issuedCertificateChain"]]
    cert_file, key_file = directory / f"{rid}.chain.pem", directory / f"{rid}.key.pem"
    cert_file.write_bytes(certs_to_pem(chain))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return X509Files(cert_file, key_file)


def _connack(dps: RunningServer, hub: str, device_id: str, credential: Credential) -> int:
    """The hub's CONNACK code for `credential` as `device_id` (0: admitted)."""

    async def attempt() -> int:
        client = HubClient(hub, device_id, credential, ca_pem=dps.server_ca)
        try:
            await client.connect()
        except ConnectRefused as exc:
            return exc.code
        await client.close()
        return 0

    return asyncio.run(attempt())


def test_after_issuance_the_old_key_and_another_devices_certificate_are_refused(
    dps: RunningServer, tmp_path: Path
) -> None:
    """The group's policy keeps nothing (the default): a device that got a certificate can no
    longer open its hub with its SAS token (even a freshly made, well-formed one), and one
    device's issued certificate does not open another device of the same group and CA."""
    keys = {rid: ec.generate_private_key(ec.SECP256R1()) for rid in ("attack-keep-1", "attack-keep-2")}
    files: dict[str, X509Files] = {}
    hub = ""
    for rid, key in keys.items():
        answer = _https(dps, "issuing", rid, {"registrationId": rid, "csr": csr_b64(make_csr(rid, key))})
        assert answer.status_code == 200 and answer.json()["status"] == "assigned", answer.text
        hub = answer.json()["registrationState"]["assignedHub"]
        files[rid] = _issued_files(tmp_path, rid, answer, key)
    sas = SymmetricKey(Secret(_key(dps, "issuing", "attack-keep-1")))
    assert _connack(dps, hub, "attack-keep-1", sas) == 5
    assert _connack(dps, hub, "attack-keep-1", files["attack-keep-2"]) == 5  # not this device's certificate
    assert _connack(dps, hub, "attack-keep-2", files["attack-keep-1"]) == 5
    assert _connack(dps, hub, "attack-keep-1", files["attack-keep-1"]) == 0  # the control: its own one works
    log = dps.log()
    assert "device attack-keep-1 authenticates with its issued certificate only" in log
    assert "device attack-keep-2 from" in log and "not the one issued to this device" in log
    assert _key(dps, "issuing", "attack-keep-1") not in log  # the refused key never reaches the log


def test_a_connection_made_with_the_old_key_is_closed_when_a_certificate_replaces_it(
    dps: RunningServer, tmp_path: Path
) -> None:
    """A device connected to its hub with its SAS token, then registering with a CSR under a
    policy that keeps nothing, does not keep that connection: the hub closes it within about a
    second of the registration (not at the device's next CONNECT), while a connection made with
    the issued certificate works and stays."""
    rid = "attack-live-1"
    # The CSR optional, so the device first registers without one: its hub identity is its key.
    dps.cli("group", "create", "issuing-later", "--symmetric-key", "--issuing-ca", "attack-ca", "--csr", "optional")
    first = _https(dps, "issuing-later", rid, {"registrationId": rid})
    assert first.status_code == 200 and first.json()["status"] == "assigned", first.text
    hub, device_id = first.json()["registrationState"]["assignedHub"], first.json()["registrationState"]["deviceId"]
    key = ec.generate_private_key(ec.SECP256R1())
    sas = SymmetricKey(Secret(_key(dps, "issuing-later", rid)))

    async def scenario() -> tuple[float, str, requests.Response]:
        old = HubClient(hub, device_id, sas, ca_pem=dps.server_ca)
        await old.connect()
        await old.send_telemetry('{"before": 1}', {})  # the SAS connection works before issuance
        body = {"registrationId": rid, "csr": csr_b64(make_csr(rid, key))}
        answer = await asyncio.to_thread(_https, dps, "issuing-later", rid, body)
        registered = time.monotonic()
        why = await asyncio.wait_for(old.wait_closed(), timeout=5)
        return time.monotonic() - registered, why, answer

    after, why, answer = asyncio.run(scenario())
    assert answer.status_code == 200 and answer.json()["status"] == "assigned", answer.text
    assert after < 2.0, f"the SAS connection was closed {after:.2f} s after the registration"
    issued = _issued_files(tmp_path, rid, answer, key)

    async def with_the_certificate() -> bool:
        client = HubClient(hub, device_id, issued, ca_pem=dps.server_ca)
        await client.connect()
        await client.send_telemetry('{"after": 1}', {})
        stays = not await _closes_within(client, 1.5)
        await client.close()
        return stays

    assert asyncio.run(with_the_certificate())
    assert _connack(dps, hub, device_id, sas) == 5  # and the key opens nothing new either
    log = dps.log()
    assert f"device {device_id} disconnected: its identity changed" in log, why
    assert _key(dps, "issuing-later", rid) not in log


async def _closes_within(client: HubClient, seconds: float) -> bool:
    try:
        await asyncio.wait_for(client.wait_closed(), timeout=seconds)
    except TimeoutError:
        return False
    return True
