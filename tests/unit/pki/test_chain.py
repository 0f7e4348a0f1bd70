"""explain_chain: every reason a device bundle fails, in words."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iotdps.errors import ChainError
from iotdps.pki import (
    Issuer,
    Validity,
    create_root_ca,
    explain_chain,
    generate_private_key,
    issue_device_certificate,
    issue_server_certificate,
    verify_chain,
)


def _device(h: Any, rid: str = "dev-1", days: int = 30) -> tuple[x509.Certificate, Any]:
    key = generate_private_key()
    return issue_device_certificate(h.line, rid, key.public_key(), Validity.days(days)), key


def test_valid_bundle(hierarchy: Any) -> None:
    leaf, key = _device(hierarchy)
    report = explain_chain(leaf, hierarchy.line.bundle, [hierarchy.root_cert], public_key=key.public_key())
    assert report.valid, report.explain()
    assert report.problems == ()
    assert len(report.path) == 4
    text = report.explain()
    assert "VALID" in text and "'dev-1' -> 'line-1' -> 'factory-a' -> 'Test Root'" in text
    assert verify_chain(leaf, hierarchy.line.bundle, [hierarchy.root_cert])[-1] == hierarchy.root_cert


def test_expired(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy, days=10)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
    report = explain_chain(leaf, hierarchy.line.bundle, [hierarchy.root_cert], now=later)
    assert not report.valid
    assert any("'dev-1' expired on" in p and "days ago" in p for p in report.problems)


def test_not_yet_valid_hints_at_the_clock(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    report = explain_chain(leaf, hierarchy.line.bundle, [hierarchy.root_cert], now=earlier)
    assert not report.valid
    assert any("'dev-1' is not yet valid" in p for p in report.problems)
    assert any("clock" in p for p in report.problems)


def test_missing_intermediate(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy)
    report = explain_chain(leaf, [hierarchy.line.certificate], [hierarchy.root_cert])
    assert not report.valid
    assert report.problems == (
        "missing intermediate: 'line-1' was issued by 'CN=factory-a', and no certificate with that subject "
        "is in the bundle, the extra chain or the trusted roots",
    )


def test_wrong_eku(hierarchy: Any) -> None:
    key = generate_private_key()
    server = issue_server_certificate(hierarchy.line, key.public_key(), Validity.days(5), dns_names=["dev-1"])
    report = explain_chain(server, hierarchy.line.bundle, [hierarchy.root_cert])
    assert not report.valid
    assert any("wrong extended key usage" in p and "serverAuth" in p and "clientAuth" in p for p in report.problems)


def test_cn_not_a_registration_id(hierarchy: Any) -> None:
    # Made outside our profile (which would refuse the CN), as another tool might.
    key = generate_private_key()
    line = hierarchy.line
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "my device!")]))
        .issuer_name(line.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        .add_extension(line.authority_key_identifier, critical=False)
        .sign(line.key, hashes.SHA256())
    )
    report = explain_chain(cert, line.bundle, [hierarchy.root_cert])
    assert not report.valid
    assert any("not a valid DPS registration id" in p for p in report.problems)


def test_key_does_not_match(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy)
    other = generate_private_key()
    report = explain_chain(leaf, hierarchy.line.bundle, [hierarchy.root_cert], public_key=other.public_key())
    assert not report.valid
    assert any("private key does not match" in p for p in report.problems)


def test_untrusted_root(hierarchy: Any, hierarchy_factory: Any) -> None:
    leaf, _ = _device(hierarchy)
    other = hierarchy_factory()
    report = explain_chain(leaf, [*hierarchy.line.bundle, hierarchy.root_cert], [other.root_cert])
    assert not report.valid
    assert any("self-signed 'Test Root', which is not one of the trusted roots" in p for p in report.problems)
    with pytest.raises(ChainError, match="not one of the trusted roots"):
        verify_chain(leaf, [*hierarchy.line.bundle, hierarchy.root_cert], [other.root_cert])


def test_same_name_different_key(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy)
    rk = generate_private_key()
    impostor = create_root_ca("Test Root", rk, Validity.days(10))
    report = explain_chain(leaf, hierarchy.line.bundle, [impostor])
    assert any("same name, different key" in p for p in report.problems)


def test_path_length_violation_is_reported() -> None:
    # A chain that breaks pathlen: root (pathlen 0) -> intermediate -> leaf. Our builders refuse
    # to make it, so it is forged directly with cryptography, as a careless tool could.
    now = dt.datetime.now(dt.UTC)
    rk, ik, lk = generate_private_key(), generate_private_key(), generate_private_key()
    root = create_root_ca("R0", rk, Validity.days(10), path_length=0)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=I"))
        .issuer_name(root.subject)
        .public_key(ik.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=5))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ik.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(rk.public_key()), critical=False)
        .sign(rk, hashes.SHA256())
    )
    leaf = issue_device_certificate(Issuer(inter, ik, (root,)), "d-1", lk.public_key(), Validity.days(1))
    report = explain_chain(leaf, [inter], [root])
    assert not report.valid
    assert any("path length violated: 'R0' allows at most 0" in p for p in report.problems)


def test_no_roots(hierarchy: Any) -> None:
    leaf, _ = _device(hierarchy)
    report = explain_chain(leaf, hierarchy.line.bundle, [])
    assert not report.valid
    assert any("no trusted root" in p for p in report.problems)
