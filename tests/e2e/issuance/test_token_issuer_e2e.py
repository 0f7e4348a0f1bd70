"""Issue 20: the issuing CA of certificate issuance with its key in a real SoftHSM2 token.

The CA site makes a file-key root and an issuing intermediate whose key is generated inside
the token (never extractable); `issuing-ca add-local` of that CA stores a `pkcs11` issuing CA
object: the chain and the key's URI, nothing secret. `iotdps up` logs in to the token with
its own IOTDPS_PKCS11_MODULE and PIN file. A symmetric-key group device registers over real
TLS with a CSR, gets a chain that `openssl verify` accepts and connects to its hub with it.
A wrong PIN in the service's PIN file fails the registration with a recorded reason; fixing
the file is enough for the retry to succeed, without a restart.

Everything that touches the token runs in a process of its own (token_cli.py says why): the
servers, and the CA commands as `python -m iotdps` children on the server's data dir.
"""

from __future__ import annotations

import asyncio
import base64
import json
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
from iotdps.pki.encoding import certs_to_pem, load_certificate
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps_testing.issuance import csr_b64, make_csr, openssl_verify
from iotdps_testing.issued_devices import register_https
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.token_cli import TokenCli, one_line_error, start_token_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

P25 = "2025-07-01-preview"
PIN = "issuing-hsm-pin-31"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    """The CA site: a file-key root, and the issuing CA (and a second CA) with token keys."""
    tc = start_token_cli(tmp_path_factory.mktemp("issuing-site"), label="issuing-hsm", user_pin=PIN)
    tc.ok("create-ca-root", "--name", "tok-root")
    for name in ("tok-issuing", "tok-other"):
        tc.ok("create-ca-intermediate", "--name", name, "--parent", "tok-root", "--pkcs11-uri", f"pkcs11:object={name}")
    return tc


def _start(site: TokenCli, tmp: Path, pin: str) -> tuple[RunningServer, Path]:
    """`iotdps up` reaching the site's token with `pin` in its PIN file, configured through the
    CLI: the token-held issuing CA, the trust bundle, a symmetric-key group naming them."""
    pin_file = tmp / "hsm-pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    env = {
        "SOFTHSM2_CONF": str(site.hsm.conf),
        "IOTDPS_PKCS11_MODULE": str(site.hsm.module),
        "IOTDPS_PKCS11_PIN_FILE": str(pin_file),
    }
    server = start_server(tmp, env=env)
    try:
        out = site.ok("issuing-ca", "add-local", "hsm-ca", "--ca", "tok-issuing", IOTDPS_DATA_DIR=str(server.data_dir))
        assert "(pkcs11, CA tok-issuing, key pkcs11:token=issuing-hsm;object=tok-issuing;id=" in out, out
        server.cli("trust-bundle", "set", "tok-roots", "--cert", str(site.ca_dir / "tok-root.cert.pem"))
        server.cli(
            "group", "create", "hsm-issued", "--symmetric-key",
            "--issuing-ca", "hsm-ca", "--cert-validity-days", "7", "--trust-bundle", "tok-roots",
        )  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return server, pin_file


@pytest.fixture(scope="module")
def dps(site: TokenCli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server, _ = _start(site, tmp_path_factory.mktemp("token-issuer-dps"), PIN)
    yield server
    assert server.stop() == 0, server.log()


def _device_key(dps: RunningServer, rid: str) -> str:
    return derive_device_key(dps.symmetric_keys("group", "hsm-issued")[0], rid)


def _issued_chain(response: requests.Response) -> list[x509.Certificate]:
    assert response.status_code == 200 and response.json()["status"] == "assigned", response.text
    state = response.json()["registrationState"]
    return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in state["issuedCertificateChain"]]


def _hub_telemetry(
    dps: RunningServer, state: dict[str, Any], chain: list[x509.Certificate], key: Any, tmp: Path
) -> None:
    cert_file, key_file = tmp / "device.pem", tmp / "device.key"
    cert_file.write_bytes(certs_to_pem(chain))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    async def hub() -> None:
        client = HubClient(
            state["assignedHub"], state["deviceId"], X509Files(cert_file, key_file), ca_pem=dps.server_ca
        )
        await client.connect()
        await client.send_telemetry('{"signed-by": "token"}', {})
        await client.close()

    asyncio.run(hub())


def test_https_device_gets_a_token_signed_chain_and_uses_it_on_the_hub(
    dps: RunningServer, site: TokenCli, tmp_path: Path
) -> None:
    rid = "hsm-https-1"
    device_key = ec.generate_private_key(ec.SECP256R1())
    response = register_https(dps, rid, _device_key(dps, rid), {"csr": csr_b64(make_csr(rid, device_key))})
    chain = _issued_chain(response)
    issuing = load_certificate((site.ca_dir / "tok-issuing.cert.pem").read_bytes())
    root = load_certificate((site.ca_dir / "tok-root.cert.pem").read_bytes())
    assert chain[1:] == [issuing, root]
    verdict = openssl_verify(tmp_path, chain, [root])
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    _hub_telemetry(dps, response.json()["registrationState"], chain, device_key, tmp_path)
    listed = dps.cli_json("certificate", "list", "--registration-id", rid, "--json")
    assert [(c["certificateAuthorityName"], c["certificateAuthorityKind"]) for c in listed] == [("hsm-ca", "pkcs11")]


def test_mqtt_device_client_with_a_csr_gets_a_token_signed_certificate(dps: RunningServer, tmp_path: Path) -> None:
    rid = "hsm-mqtt-1"
    settings = DeviceSettings(
        dps.address,
        dps.id_scope,
        rid,
        SymmetricKey(Secret(_device_key(dps, rid))),
        tmp_path / "state.json",
        ca_pem=dps.server_ca,
        issue_certificate=True,
    )

    async def run() -> None:
        agent = DeviceAgent(settings)
        client = await agent.start()
        await client.send_telemetry('{"n": 1}', {})
        await agent.renew()  # a second certificate through the same token session
        await agent.stop()

    asyncio.run(run())
    files = IssuedFiles(settings.state_file)
    chain = x509.load_pem_x509_certificates(files.chain_file.read_bytes())
    verdict = openssl_verify(tmp_path, chain, files.bundle_file.read_bytes())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert len(dps.cli_json("certificate", "list", "--registration-id", rid, "--json")) == 2


def test_the_object_holds_a_uri_and_the_key_stays_in_the_token(dps: RunningServer, site: TokenCli) -> None:
    shown = site.ok("issuing-ca", "list", IOTDPS_DATA_DIR=str(dps.data_dir))
    assert "hsm-ca" in shown and "pkcs11" in shown
    audit = dps.cli("audit", "list", "--json", "--target", "issuing-ca/hsm-ca")
    audited = [json.loads(line) for line in audit.splitlines()]
    assert [e["action"] for e in audited] == ["issuing-ca.create"] and audited[0]["actor"].startswith("local:")
    # Neither the database nor anything else in the data dir holds the PIN or a private key.
    for path in dps.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PIN.encode() not in data, path
            if path.name.startswith("iotdps.db"):
                assert b"PRIVATE KEY" not in data
    # The token refuses to reveal the CA key: sensitive, never extractable.
    probe = site.python(
        "import os, pkcs11\n"
        "from pkcs11 import Attribute, ObjectClass\n"
        "lib = pkcs11.lib(os.environ['IOTDPS_PKCS11_MODULE'])\n"
        "tok = lib.get_token(token_label='issuing-hsm')\n"
        "with tok.open(user_pin=os.environ['IOTDPS_PKCS11_PIN']) as s:\n"
        "    key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label='tok-issuing')\n"
        "    print(key[Attribute.SENSITIVE], key[Attribute.EXTRACTABLE], key[Attribute.NEVER_EXTRACTABLE])\n"
        "    try:\n"
        "        key[Attribute.VALUE]\n"
        "        print('revealed')\n"
        "    except pkcs11.PKCS11Error as exc:\n"
        "        print('refused', type(exc).__name__)\n"
    )
    assert probe.returncode == 0, probe.stderr
    flags, refused = probe.stdout.splitlines()
    assert flags == "True False True" and refused.startswith("refused"), probe.stdout


def test_a_token_key_that_is_not_the_ca_certificates_is_refused_on_create(dps: RunningServer, site: TokenCli) -> None:
    data = {"IOTDPS_DATA_DIR": str(dps.data_dir)}
    args = ("issuing-ca", "add-pkcs11", "wrong-key", "--ca", "tok-issuing", "--pkcs11-uri", "pkcs11:object=tok-other")
    one_line_error(site.run(*args, **data), "does not match the expected public key (the CA certificate's)")
    one_line_error(site.run(*args[:-1], "pkcs11:object=no-such-key", **data), "no private key with label 'no-such-key'")
    one_line_error(
        site.run(*args[:-1], "pkcs11:object=tok-issuing", IOTDPS_PKCS11_PIN="not-the-pin", **data), "wrong PIN"
    )
    one_line_error(site.run(*args[:-1], "pkcs11:object=tok-issuing?pin-value=x", **data), "carries pin-value")
    listed = site.ok("issuing-ca", "list", **data)
    assert "wrong-key" not in listed
    # The right key, named explicitly, is accepted.
    out = site.ok(*args[:-1], "pkcs11:object=tok-issuing", **data)
    assert "issuing CA wrong-key (pkcs11, key pkcs11:token=issuing-hsm;object=tok-issuing;" in out


def test_wrong_pin_at_issuance_is_a_recorded_refusal_until_the_pin_file_is_fixed(
    site: TokenCli, tmp_path: Path
) -> None:
    server, pin_file = _start(site, tmp_path, "not-the-pin")
    try:
        rid = "hsm-pin-1"
        device_key = ec.generate_private_key(ec.SECP256R1())
        body = {"csr": csr_b64(make_csr(rid, device_key))}
        key = _device_key(server, rid)
        failed = register_https(server, rid, key, body)
        assert failed.status_code == 200 and failed.json()["status"] == "failed", failed.text
        refusals = [r for r in server.refusals(rid) if r.reason == "ISSUANCE_CA_REFUSED"]
        assert refusals and "wrong PIN for PKCS#11 token 'issuing-hsm'" in refusals[0].message, refusals
        assert "not-the-pin" not in refusals[0].message and "not-the-pin" not in server.log()
        pin_file.write_text(PIN + "\n")  # the operator fixes the service's PIN file; no restart
        chain = _issued_chain(register_https(server, rid, key, body))
        verdict = openssl_verify(tmp_path, chain, [chain[-1]])
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert "Traceback" not in server.log() and PIN not in server.log()
    finally:
        assert server.stop() == 0, server.log()
