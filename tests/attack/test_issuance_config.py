"""The management API of certificate issuance (issue 18) over loopback TLS: trust bundles with
versions and etags, issuing CA objects whose secrets are write-only and sealed, the enrollment
fields, and the issued-certificate list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from iotdps.access import make_service_sas
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.keys import encode_private_key
from iotdps.secret import Secret
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("issuance-api")).start()
    try:
        yield srv
    finally:
        srv.stop()


def _root(cn: str) -> Issuer:
    key = generate_private_key()
    return Issuer(create_root_ca(cn, key, Validity.days(60)), key)


def _pem(issuer: Issuer) -> str:
    return issuer.certificate.public_bytes(serialization.Encoding.PEM).decode()


class Api:
    def __init__(self, server: ManagementServer, policy: str = "provisioningserviceowner") -> None:
        self.server, self.policy = server, policy

    def __call__(self, method: str, path: str, body: Any = None, **headers: str) -> requests.Response:
        key = self.server.policies.get(self.policy).primary_key.reveal()
        all_headers = {"Authorization": make_service_sas(self.server.host_port, self.policy, key), **headers}
        return requests.request(
            method,
            self.server.base_url + path,
            json=body,
            headers=all_headers,
            verify=str(self.server.ca_path),
            timeout=30,
        )


def test_trust_bundle_versions_etags_and_refusals(server: ManagementServer) -> None:
    api = Api(server)
    a, b = _root("Bundle API Root A"), _root("Bundle API Root B")
    created = api("PUT", "/trustBundles/Fleet-Roots", {"certificates": [{"certificate": _pem(a)}]})
    assert created.status_code == 200, created.text
    v1 = created.json()
    assert v1["version"] == 1 and v1["id"] == "Fleet-Roots" and created.headers["ETag"] == f'"{v1["etag"]}"'
    assert v1["certificates"][0]["metadata"]["subjectName"] == "CN=Bundle API Root A"
    # The next version, guarded by If-Match; a stale etag loses.
    body = {"certificates": [{"certificate": _pem(a)}, {"certificate": _pem(b)}]}
    v2 = api("PUT", "/trustBundles/fleet-roots", body, **{"If-Match": f'"{v1["etag"]}"'})
    assert v2.status_code == 200 and v2.json()["version"] == 2
    stale = api("PUT", "/trustBundles/fleet-roots", body, **{"If-Match": f'"{v1["etag"]}"'})
    assert stale.status_code == 412
    got = api("GET", "/trustBundles/FLEET-ROOTS")
    assert got.status_code == 200 and got.json()["version"] == 2 and len(got.json()["certificates"]) == 2
    assert [x["id"] for x in api("GET", "/trustBundles").json()] == ["Fleet-Roots"]
    # What a client can send wrong: each a 400 naming the problem.
    leaf_key = generate_private_key()
    from iotdps.pki import issue_device_certificate

    leaf = issue_device_certificate(a, "dev-1", leaf_key.public_key(), Validity.days(1))
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
    for bad, words in (
        ({"certificates": []}, "at least one"),
        ({"certificates": [{"certificate": leaf_pem}]}, "CA certificates only"),
        ({"certificates": [{"certificate": "garbage"}]}, "certificates[0]"),
        ({"certificates": [{"certificate": _pem(a)}, {"certificate": _pem(a)}]}, "duplicate"),
        ({"certificates": "x"}, "must be a list"),
        ({"id": "other", "certificates": [{"certificate": _pem(a)}]}, "names trust bundle"),
    ):
        refused = api("PUT", "/trustBundles/fleet-roots", bad)
        assert refused.status_code == 400 and words in refused.json()["message"], (bad, refused.text)
    assert api("PUT", "/trustBundles/-bad-", {"certificates": [{"certificate": _pem(a)}]}).status_code == 400
    assert api("GET", "/trustBundles/fleet-roots").json()["version"] == 2  # nothing half-written
    assert api("DELETE", "/trustBundles/fleet-roots", **{"If-Match": '"nope"'}).status_code == 412
    assert api("DELETE", "/trustBundles/fleet-roots").status_code == 204
    assert api("GET", "/trustBundles/fleet-roots").status_code == 404


def test_issuing_cas_keep_their_secrets(server: ManagementServer, tmp_path: Path) -> None:
    api = Api(server)
    root = _root("Issuing API Root")
    key_pem = encode_private_key(root.key, Secret("correct horse")).decode()
    local = {"kind": "local", "caChain": [_pem(root)], "key": key_pem, "passphrase": "correct horse"}
    put = api("PUT", "/certificateAuthorities/factory-ca", local)
    assert put.status_code == 200, put.text
    shown = put.json()
    assert shown["kind"] == "local" and "correct horse" not in put.text and "PRIVATE KEY" not in put.text
    # Re-PUT without the secret keeps it (write-only); a wrong passphrase is refused.
    again = api("PUT", "/certificateAuthorities/factory-ca", {"kind": "local", "caChain": [_pem(root)]})
    assert again.status_code == 200, again.text
    wrong = api("PUT", "/certificateAuthorities/factory-ca", {**local, "passphrase": "wrong"})
    assert wrong.status_code == 400 and "does not open" in wrong.json()["message"]
    other = _root("Not The Key Owner")
    mismatched = api("PUT", "/certificateAuthorities/factory-ca", {**local, "caChain": [_pem(other)]})
    assert mismatched.status_code == 400 and "does not match" in mismatched.json()["message"]
    cfssl = {
        "kind": "cfssl",
        "caChain": [_pem(root)],
        "url": "https://127.0.0.1:8889",
        "profile": "device",
        "authKey": "00112233445566778899aabbccddeeff",
    }
    assert api("PUT", "/certificateAuthorities/cfssl-ca", cfssl).status_code == 200
    listed = api("GET", "/certificateAuthorities")
    assert [c["name"] for c in listed.json()] == ["cfssl-ca", "factory-ca"]
    assert "00112233445566778899aabbccddeeff" not in listed.text
    for bad, words in (
        ({**cfssl, "authKey": "abcd"}, "shorter than 16 bytes"),
        ({**cfssl, "url": "http://10.1.2.3:8888"}, "https"),
        ({**cfssl, "profile": "bad profile!"}, "profile name"),
        ({**cfssl, "timeoutSeconds": 0}, "timeout"),
        ({**cfssl, "extra": 1}, "no field"),
        ({**cfssl, "kind": "acme"}, "kind must be"),
        ({**cfssl, "caChain": []}, "chain is empty"),
    ):
        refused = api("PUT", "/certificateAuthorities/cfssl-2", bad)
        assert refused.status_code == 400 and words in refused.json()["message"], (bad, refused.text)
    assert api("GET", "/certificateAuthorities/cfssl-2").status_code == 404
    # The read-only policy cannot change issuing CAs.
    assert Api(server, "enrollmentread")("PUT", "/certificateAuthorities/cfssl-2", cfssl).status_code in (401, 403)
    assert api("DELETE", "/certificateAuthorities/cfssl-ca").status_code == 204
    # What the database holds: sealed, never the secrets.
    assert server.store is not None

    async def stored() -> str:
        assert server.store is not None
        async with server.store.read() as uow:
            return json.dumps([ca.to_doc() for ca in await uow.issuing_cas.list()])

    text = server.call(stored())
    assert "correct horse" not in text and "sealedSecret" in text


def test_token_issuing_ca_refuses_pins_modules_and_unusable_uris(
    server: ManagementServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pkcs11 issuing CA names its key only: a URI that smuggles a PIN or a module, names no
    private key, or rides along with a key or passphrase is a 400 that never echoes the PIN;
    without the service's IOTDPS_PKCS11_MODULE nothing is stored. (The token itself is
    exercised by tests/e2e/issuance/test_token_issuer_e2e.py, in a process of its own.)"""
    for name in ("IOTDPS_PKCS11_MODULE", "IOTDPS_PKCS11_PIN", "IOTDPS_PKCS11_PIN_FILE", "IOTDPS_PKCS11_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    api = Api(server)
    root = _root("Token API Root")
    good = {"kind": "pkcs11", "caChain": [_pem(root)], "pkcs11Uri": "pkcs11:token=ca;object=issuing"}
    for bad, words in (
        ({**good, "pkcs11Uri": "pkcs11:token=ca;object=issuing?pin-value=S3cretPin"}, "carries pin-value"),
        ({**good, "pkcs11Uri": "pkcs11:token=ca;object=issuing?module-path=/tmp/evil.so"}, "carries module-path"),
        ({**good, "pkcs11Uri": "pkcs11:token=ca;object=issuing?pin-source=/etc/shadow"}, "carries pin-source"),
        ({**good, "pkcs11Uri": "pkcs11:token=ca;object=issuing;type=cert"}, "type=private"),
        ({**good, "pkcs11Uri": "pkcs11:token=ca"}, "must name the key"),
        ({**good, "pkcs11Uri": "https://ca.example/key"}, "starts with 'pkcs11:'"),
        ({**good, "pkcs11Uri": 7}, "needs pkcs11Uri"),
        ({k: v for k, v in good.items() if k != "pkcs11Uri"}, "needs pkcs11Uri"),
        ({**good, "passphrase": "correct horse"}, "no field(s) 'passphrase'"),
        ({**good, "key": "-----BEGIN ENCRYPTED PRIVATE KEY-----"}, "no field(s) 'key'"),
        (good, "set IOTDPS_PKCS11_MODULE"),  # the service has no token configured
    ):
        refused = api("PUT", "/certificateAuthorities/token-ca", bad)
        assert refused.status_code == 400 and words in refused.json()["message"], (bad, refused.text)
        assert "S3cretPin" not in refused.text
    assert api("GET", "/certificateAuthorities/token-ca").status_code == 404


def test_enrollment_group_carries_issuance_policy_and_bundle(server: ManagementServer) -> None:
    api = Api(server)
    group = {
        "enrollmentGroupId": "issuing-group",
        "attestation": {"type": "symmetricKey"},
        "clientCertificateIssuancePolicy": {"certificateAuthorityName": "factory-ca", "validityInDays": 7},
        "trustBundleId": "fleet-roots",
    }
    put = api("PUT", "/enrollmentGroups/issuing-group", group)
    assert put.status_code == 200, put.text
    policy = api("GET", "/enrollmentGroups/issuing-group").json()["clientCertificateIssuancePolicy"]
    assert policy == {
        "certificateAuthorityName": "factory-ca",
        "validityInDays": 7,
        "acceptedKeyTypes": ["ecP256", "ecP384", "rsa2048", "rsa3072", "rsa4096"],
        "csrRequirement": "required",
        "keepExistingCredential": False,  # the secure default: after issuance, the certificate alone
    }
    kept = {**group["clientCertificateIssuancePolicy"], "keepExistingCredential": True}
    turned_on = api("PUT", "/enrollmentGroups/issuing-group", {**group, "clientCertificateIssuancePolicy": kept})
    assert (
        turned_on.status_code == 200 and turned_on.json()["clientCertificateIssuancePolicy"]["keepExistingCredential"]
    )
    for field, value, words in (
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "validityInDays": 0}, "between"),
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "acceptedKeyTypes": ["dsa"]}, "dsa"),
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "csrRequirement": "maybe"}, "required"),
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "other": 1}, "unknown field"),
        # Only a JSON boolean turns the old credential on: not a string, a number or null.
        (
            "clientCertificateIssuancePolicy",
            {"certificateAuthorityName": "x", "keepExistingCredential": "true"},
            "true",
        ),
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "keepExistingCredential": 1}, "true"),
        ("clientCertificateIssuancePolicy", {"certificateAuthorityName": "x", "keepExistingCredential": None}, "true"),
        ("trustBundleId", "-bad-", "trust bundle id"),
    ):
        refused = api("PUT", "/enrollmentGroups/issuing-group", {**group, field: value})
        assert refused.status_code == 400 and words in refused.json()["message"], (field, refused.text)
    # None of the refused documents changed the stored policy.
    stored = api("GET", "/enrollmentGroups/issuing-group").json()["clientCertificateIssuancePolicy"]
    assert stored["keepExistingCredential"] is True


def test_issued_certificate_list_validates_its_query(server: ManagementServer) -> None:
    api = Api(server)
    assert api("GET", "/issuedCertificates").json() == []
    assert api("GET", "/issuedCertificates?limit=0").status_code == 400
    assert api("GET", "/issuedCertificates?limit=x").status_code == 400
    assert api("GET", "/issuedCertificates?registrationId=bad%20id").status_code == 400
