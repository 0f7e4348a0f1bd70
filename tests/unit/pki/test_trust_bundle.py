"""trust_bundle: versions and etags, the 2021-11-01-preview rendering, validation, and the
api-version table of issuance_wire."""

from __future__ import annotations

import base64
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from iotdps.errors import InvalidInput
from iotdps.pki import (
    Issuer,
    Validity,
    certificate_info,
    create_root_ca,
    generate_private_key,
    issue_device_certificate,
    load_certificate,
)
from iotdps.pki.csr_policy import IssuanceProfile, vet_csr
from iotdps.pki.issuance_wire import csr_field, issuance_state_fields
from iotdps.pki.issuing import LocalIssuer
from iotdps.pki.trust_bundle import MAX_BUNDLE_CERTIFICATES, TrustBundle, certificates_from_json
from iotdps_testing.issuance import make_csr, openssl_verify

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
_DPS_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


def root(cn: str) -> Issuer:
    key = generate_private_key()
    return Issuer(create_root_ca(cn, key, Validity.days(365)), key, name=cn.replace(" ", "-"))


@pytest.fixture(scope="module")
def roots() -> list[Issuer]:
    return [root("Bundle Root A"), root("Bundle Root B")]


def test_new_bundle_and_its_wire_shape(roots: list[Issuer]) -> None:
    bundle = TrustBundle.new("fleet-roots", [r.certificate for r in roots], now=T0)
    assert bundle.version == 1 and bundle.created == bundle.modified == T0
    wire = bundle.to_wire()
    assert set(wire) == {"id", "etag", "createdDateTime", "lastModifiedDateTime", "certificates"}
    assert wire["id"] == "fleet-roots" and wire["etag"] == bundle.etag
    assert _DPS_TIME.match(wire["createdDateTime"]) and wire["createdDateTime"].startswith("2026-01-02T03:04:05.")
    assert len(wire["certificates"]) == 2
    for entry, issuer in zip(wire["certificates"], roots, strict=True):
        assert set(entry) == {"certificate", "metadata"}
        # PEM with CRLF, parseable as is, and the very certificate.
        assert "\r\n" in entry["certificate"] and entry["certificate"].startswith("-----BEGIN CERTIFICATE-----\r\n")
        assert load_certificate(entry["certificate"]) == issuer.certificate
        meta = entry["metadata"]
        assert set(meta) == {
            "subjectName",
            "sha1Thumbprint",
            "sha256Thumbprint",
            "issuerName",
            "notBeforeUtc",
            "notAfterUtc",
            "serialNumber",
            "version",
        }
        assert meta == dict(certificate_info(issuer.certificate))
        assert meta["version"] == 3
        assert meta["subjectName"] == meta["issuerName"] == f"CN={issuer.name.replace('-', ' ')}"


def test_management_json_adds_the_version_and_round_trips(roots: list[Issuer]) -> None:
    bundle = TrustBundle.new("fleet-roots", [roots[0].certificate], now=T0).revised(
        [r.certificate for r in roots], now=T0 + dt.timedelta(hours=1)
    )
    doc = bundle.to_json()
    assert doc["version"] == 2
    back = TrustBundle.from_json(doc)
    assert back == bundle


def test_revision_bumps_version_and_etag_and_keeps_creation(roots: list[Issuer]) -> None:
    first = TrustBundle.new("b1", [roots[0].certificate], now=T0)
    second = first.revised([roots[0].certificate, roots[1].certificate], now=T0 + dt.timedelta(days=1))
    assert second.version == 2 and second.etag != first.etag
    assert second.created == T0 and second.modified == T0 + dt.timedelta(days=1)
    assert second.contains(roots[1].certificate) and not first.contains(roots[1].certificate)


def test_create_body_takes_pem_or_base64_der_and_ignores_metadata(roots: list[Issuer]) -> None:
    der = roots[1].certificate.public_bytes(serialization.Encoding.DER)
    body = {
        "certificates": [
            {
                "certificate": roots[0].certificate.public_bytes(serialization.Encoding.PEM).decode(),
                "metadata": {"x": 1},
            },
            {"certificate": base64.b64encode(der).decode()},
        ]
    }
    assert certificates_from_json(body) == (roots[0].certificate, roots[1].certificate)


def leaf_under(issuer: Issuer) -> x509.Certificate:
    return issue_device_certificate(issuer, "dev-1", generate_private_key().public_key(), Validity.days(10))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(lambda r: [], "at least one", id="empty"),
        pytest.param(lambda r: [r[0].certificate, r[0].certificate], "duplicate of certificate 1", id="duplicate"),
        pytest.param(lambda r: [leaf_under(r[0])], "not a CA", id="leaf"),
    ],
)
def test_invalid_bundles_are_refused(roots: list[Issuer], make: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        TrustBundle.new("b1", make(roots))


def test_count_is_bounded() -> None:
    many = [root(f"Root {i}").certificate for i in range(MAX_BUNDLE_CERTIFICATES + 1)]
    with pytest.raises(InvalidInput, match=f"at most {MAX_BUNDLE_CERTIFICATES}"):
        TrustBundle.new("big", many)
    assert len(TrustBundle.new("big", many[:MAX_BUNDLE_CERTIFICATES]).certificates) == MAX_BUNDLE_CERTIFICATES


def test_ca_flag_without_cert_sign_is_refused() -> None:
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "odd CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidInput, match="may not sign certificates"):
        TrustBundle.new("b1", [cert])


@pytest.mark.parametrize("bundle_id", ["", "-lead", "trail.", "a" * 129, "sp ace", "ünï"])
def test_bad_ids_are_refused(roots: list[Issuer], bundle_id: str) -> None:
    with pytest.raises(InvalidInput, match="invalid trust bundle id"):
        TrustBundle.new(bundle_id, [roots[0].certificate])


def test_bad_create_bodies_are_refused() -> None:
    with pytest.raises(InvalidInput, match="must be a list"):
        certificates_from_json({"certificates": "x"})
    with pytest.raises(InvalidInput, match=r"certificates\[0\].certificate"):
        certificates_from_json({"certificates": [{"cert": "x"}]})
    with pytest.raises(InvalidInput, match=r"certificates\[0\]"):
        certificates_from_json({"certificates": [{"certificate": "bm90IGEgY2VydA=="}]})


async def test_devices_can_verify_an_issued_chain_with_the_bundle_pem(tmp_path: Path, roots: list[Issuer]) -> None:
    """The bundle's PEM, CRLF and all, is what a device puts in its root store: openssl takes it."""
    issuer = LocalIssuer("bundle-ca", roots[0])
    chain = await issuer.issue(vet_csr(make_csr("dev-1"), "dev-1"), IssuanceProfile(5))
    bundle = TrustBundle.new("fleet", [roots[1].certificate, roots[0].certificate])
    store = "".join(e["certificate"] for e in bundle.to_wire()["certificates"]).encode("ascii")
    result = openssl_verify(tmp_path, chain.certificates[:-1], store)
    assert result.returncode == 0, result.stderr
    # And a bundle without that root does not vouch for it.
    other = TrustBundle.new("other", [roots[1].certificate])
    store = "".join(e["certificate"] for e in other.to_wire()["certificates"]).encode("ascii")
    assert openssl_verify(tmp_path, chain.certificates[:-1], store, name="neg").returncode != 0


# --------------------------------------------------------------------------- issuance_wire


async def test_registration_state_fields_per_api_version(roots: list[Issuer]) -> None:
    issuer = LocalIssuer("wire-ca", roots[0])
    chain = await issuer.issue(vet_csr(make_csr("dev-1"), "dev-1"), IssuanceProfile(5))
    bundle = TrustBundle.new("fleet", [roots[0].certificate])

    new = issuance_state_fields("2025-07-01-preview", chain, bundle)
    assert [load_certificate(c) for c in new["issuedCertificateChain"]] == [chain.leaf, roots[0].certificate]
    assert all("\n" not in c and "-----" not in c for c in new["issuedCertificateChain"])
    assert new["trustBundle"] == bundle.to_wire()

    old = issuance_state_fields("2021-11-01-preview", chain, bundle)
    assert set(old) == {"issuedClientCertificate", "trustBundle"}
    assert load_certificate(old["issuedClientCertificate"]) == chain.leaf

    assert issuance_state_fields("2019-03-31", chain, bundle) == {}
    assert csr_field("2025-07-01-preview") == "csr"
    assert csr_field("2021-11-01-preview") == "clientCertificateCsr"
    assert csr_field("2019-03-31") is None
