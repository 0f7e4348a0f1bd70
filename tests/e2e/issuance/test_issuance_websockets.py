"""Certificate issuance over MQTT over websockets (issue 18: "over MQTT, HTTPS and websockets"),
against a real `iotdps up`: `wss://<dps>:443/$iothub/websocket`, subprotocol `mqtt`, opened by
aiohttp's client with real TLS trusting only the server CA; DPS MQTT driven by our sans-IO
client session (iotdps_testing.rawdps, the same code that speaks it over TCP).

A symmetric-key group device sends a CSR in both preview shapes (`csr` of 2025-07-01-preview,
`clientCertificateCsr` of 2021-11-01-preview), polls its operation to `assigned`, gets a chain
that `openssl verify` accepts against the trust bundle, and the hub takes the issued
certificate for one telemetry message. Bad CSRs over websockets get exactly the answers they
get over MQTT on TCP, and nothing is issued or registered."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotdps.device import HubClient, X509Files
from iotdps.pki.encoding import certs_to_pem, sha256_thumbprint
from iotdps.sas import derive_device_key, make_sas_token
from iotdps_testing.issuance import csr_b64, make_csr, openssl_verify
from iotdps_testing.rawdps import DpsAnswer, open_raw_dps
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

P25, P21 = "2025-07-01-preview", "2021-11-01-preview"
TIMEOUT = 20.0  # every DPS exchange and hub call; the whole test stays well under a minute


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("issuance-ws")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "ws-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "ws-root")
        server.cli("issuing-ca", "add-local", "ws-ca", "--ca", "ws-root")
        server.cli("trust-bundle", "set", "ws-roots", "--cert", str(tmp / "ca" / "ws-root.cert.pem"))
        server.cli(
            "group", "create", "ws-issuing", "--symmetric-key",
            "--issuing-ca", "ws-ca", "--cert-validity-days", "7", "--trust-bundle", "ws-roots",
        )  # fmt: skip
        yield server
    finally:
        server.stop()


def _token(dps: RunningServer, rid: str) -> str:
    key = derive_device_key(dps.symmetric_keys("group", "ws-issuing")[0], rid)
    return make_sas_token(dps.id_scope, rid, key, int(time.time()) + 600)


def _bundle_pem(dps: RunningServer) -> bytes:
    doc = dps.cli_json("trust-bundle", "show", "ws-roots")
    return "".join(c["certificate"].replace("\r\n", "\n") for c in doc["certificates"]).encode()


async def _register_over_websocket(
    dps: RunningServer, rid: str, token: str, api_version: str, body: dict[str, Any]
) -> tuple[DpsAnswer, DpsAnswer]:
    """Register with `body`, then poll the operation to its end: (register answer, final poll)."""
    async with open_raw_dps(dps, rid, websocket=True, timeout=TIMEOUT) as raw:
        assert await raw.connect(token, dps, api_version) == 0
        first = await raw.register(body)
        assert first.status in (200, 202), first
        # A direct 200 (the pipeline beat the answer budget) still names its operation; the
        # poll must answer the same final state, issued certificate included.
        final = await raw.poll(first.body["operationId"])
        return first, final


async def _send_telemetry(state: dict[str, Any], cert_file: Path, key_file: Path, ca_pem: str) -> None:
    client = HubClient(state["assignedHub"], state["deviceId"], X509Files(cert_file, key_file), ca_pem=ca_pem)
    async with asyncio.timeout(TIMEOUT):
        await client.connect()
        try:
            await client.send_telemetry('{"via": "websockets"}', {})
        finally:
            await client.close()


def _issued_leaf(api_version: str, state: dict[str, Any]) -> list[x509.Certificate]:
    """The chain as each preview answers it: base64 DER leaf..root, or the leaf as PEM."""
    if api_version == P25:
        assert "issuedClientCertificate" not in state
        return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in state["issuedCertificateChain"]]
    assert "issuedCertificateChain" not in state
    assert state["issuedClientCertificate"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    return x509.load_pem_x509_certificates(state["issuedClientCertificate"].encode())


@pytest.mark.parametrize(("api_version", "field"), [(P25, "csr"), (P21, "clientCertificateCsr")])
def test_websocket_device_gets_a_certificate_the_hub_accepts(
    dps: RunningServer, tmp_path: Path, api_version: str, field: str
) -> None:
    rid = f"ws-issued-{field.lower()}"
    device_key = ec.generate_private_key(ec.SECP256R1())
    body = {field: csr_b64(make_csr(rid, device_key))}
    first, final = asyncio.run(_register_over_websocket(dps, rid, _token(dps, rid), api_version, body))

    assert final.status == 200 and final.body["status"] == "assigned", final
    state = final.body["registrationState"]
    if first.status == 200:  # the direct answer and the poll agree
        assert first.body["registrationState"] == state
    chain = _issued_leaf(api_version, state)
    leaf = chain[0]
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == rid
    assert leaf.public_key() == device_key.public_key()
    assert state["trustBundle"]["id"] == "ws-roots"
    verdict = openssl_verify(tmp_path, chain, _bundle_pem(dps))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr

    record = dps.registration(rid)
    assert record.status == "assigned" and record.issued_certificate == sha256_thumbprint(leaf)
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert [int(c["serialNumber"], 16) for c in listed] == [leaf.serial_number]

    cert_file, key_file = tmp_path / "device.pem", tmp_path / "device.key"
    cert_file.write_bytes(certs_to_pem(chain))
    key_file.write_bytes(
        device_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    asyncio.run(_send_telemetry(state, cert_file, key_file, dps.server_ca))
    messages = dps.telemetry(state["assignedHub"], state["deviceId"])
    assert [m.body for m in messages] == [b'{"via": "websockets"}']


def _bad_csrs(rid: str) -> dict[str, str]:
    der = bytearray(base64.b64decode(csr_b64(make_csr(rid))))
    der[-3] ^= 0x01  # inside the signature
    return {
        "CSR_CN_MISMATCH": csr_b64(make_csr("ws-someone-else")),
        "CSR_BAD_SIGNATURE": base64.b64encode(bytes(der)).decode(),
        "CSR_REQUESTS_CA": csr_b64(
            make_csr(rid, extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
        ),
    }


async def _answers(dps: RunningServer, rid: str, token: str, csrs: list[str], *, websocket: bool) -> list[DpsAnswer]:
    """Each CSR in its own register request, one after the other on one connection."""
    async with open_raw_dps(dps, rid, websocket=websocket, timeout=TIMEOUT) as raw:
        assert await raw.connect(token, dps, P25) == 0
        return [await raw.register({"csr": csr}) for csr in csrs]


def test_bad_csrs_over_websockets_are_refused_as_over_mqtt(dps: RunningServer) -> None:
    rid = "ws-bad-csr-1"
    cases = _bad_csrs(rid)
    token = _token(dps, rid)
    over_ws = asyncio.run(_answers(dps, rid, token, list(cases.values()), websocket=True))
    over_tcp = asyncio.run(_answers(dps, rid, token, list(cases.values()), websocket=False))

    for reason, ws, tcp in zip(cases, over_ws, over_tcp, strict=True):
        assert ws.status == 400, (reason, ws)
        assert (ws.status, ws.body["errorCode"], ws.body["message"]) == (
            tcp.status,
            tcp.body["errorCode"],
            tcp.body["message"],
        ), reason
    # The codes differ by reason (400022 CN, 400023 CA rights), so a transport that mixed the
    # requests up would show here too.
    assert over_ws[0].body["errorCode"] == 400022 and over_ws[2].body["errorCode"] == 400023
    # The refusal log keeps one row per reason and peer, counting attempts: one per transport.
    attempts = {r.reason: r.count for r in dps.refusals(rid)}
    assert attempts == dict.fromkeys(cases, 2), attempts
    assert dps.registration(rid) is None  # nothing registered, nothing issued
    assert dps.cli_json("certificate", "list", "--registration-id", rid, "--json") == []
