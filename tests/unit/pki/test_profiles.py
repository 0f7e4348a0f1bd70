from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from iotdps.errors import InvalidInput, InvalidRegistrationId, PkiError
from iotdps.pki import (
    Issuer,
    KeySpec,
    Validity,
    create_intermediate_ca,
    create_root_ca,
    create_server_identity,
    generate_private_key,
    issue_device_certificate,
    issue_server_certificate,
    issue_verification_certificate,
)
from iotdps.pki.template import DeviceTemplate


def _ext(cert: x509.Certificate, cls: type) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(cls).value


def _client_verifier(roots: list[x509.Certificate]):
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    return (
        PolicyBuilder()
        .store(Store(roots))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
        .build_client_verifier()
    )


def test_root_profile() -> None:
    key = generate_private_key()
    cert = create_root_ca("Root", key, Validity.days(30), path_length=1)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = _ext(cert, x509.KeyUsage)
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)


def test_four_level_hierarchy_verifies_with_cryptography(hierarchy: Any) -> None:
    dev_key = generate_private_key()
    leaf = issue_device_certificate(hierarchy.line, "dev-0001", dev_key.public_key(), Validity.days(10))
    verified = _client_verifier([hierarchy.root_cert]).verify(leaf, list(hierarchy.line.bundle))
    assert [c.subject for c in verified.chain] == [
        leaf.subject,
        hierarchy.line.certificate.subject,
        hierarchy.factory.certificate.subject,
        hierarchy.root_cert.subject,
    ]
    assert _ext(hierarchy.factory.certificate, x509.BasicConstraints).path_length == 1
    assert _ext(hierarchy.line.certificate, x509.BasicConstraints).path_length == 0


def test_device_profile(hierarchy: Any) -> None:
    key = generate_private_key()
    cert = issue_device_certificate(hierarchy.line, "Dev_1:a.b-", key.public_key(), Validity.days(10))
    assert cert.subject.rfc4514_string() == "CN=Dev_1:a.b-"
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = _ext(cert, x509.KeyUsage)
    assert ku.digital_signature and not ku.key_cert_sign
    assert _ext(cert, x509.BasicConstraints).ca is False
    assert (
        _ext(cert, x509.AuthorityKeyIdentifier).key_identifier
        == _ext(hierarchy.line.certificate, x509.SubjectKeyIdentifier).digest
    )
    assert cert.serial_number.bit_length() > 64  # CSPRNG serial, not a counter


def test_serials_differ(hierarchy: Any) -> None:
    key = generate_private_key()
    serials = {
        issue_device_certificate(hierarchy.line, "d1", key.public_key(), Validity.days(1)).serial_number
        for _ in range(20)
    }
    assert len(serials) == 20


@pytest.mark.parametrize("bad", ["", "bad/id", "ends.", "a" * 129, "é-device"])
def test_device_cn_must_be_registration_id(hierarchy: Any, bad: str) -> None:
    with pytest.raises(InvalidRegistrationId):
        issue_device_certificate(hierarchy.line, bad, generate_private_key().public_key(), Validity.days(1))


def test_registration_id_longer_than_a_cn_is_refused(hierarchy: Any) -> None:
    with pytest.raises(InvalidInput, match="at most 64"):
        issue_device_certificate(hierarchy.line, "a" * 65, generate_private_key().public_key(), Validity.days(1))


def test_path_length_exhausted_is_refused(hierarchy: Any) -> None:
    with pytest.raises(PkiError, match="path length 0"):
        create_intermediate_ca(hierarchy.line, "sub-line", generate_private_key().public_key(), Validity.days(5))


def test_path_length_request_beyond_budget_is_refused(hierarchy: Any) -> None:
    with pytest.raises(PkiError, match="more than"):
        create_intermediate_ca(
            hierarchy.factory, "x", generate_private_key().public_key(), Validity.days(5), path_length=3
        )


def test_ancestor_constraint_counts_too() -> None:
    # Root allows 1 intermediate level; an unconstrained intermediate below must not hide that.
    rk = generate_private_key()
    root = Issuer(create_root_ca("R", rk, Validity.days(100), path_length=1), rk)
    ik = generate_private_key()
    cert = create_intermediate_ca(root, "I", ik.public_key(), Validity.days(50))
    assert _ext(cert, x509.BasicConstraints).path_length == 0
    # Even an intermediate forged without a constraint cannot be used to go deeper.
    forged = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(root.certificate.subject)
        .public_key(ik.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(rk, hashes.SHA256())
    )
    with pytest.raises(PkiError, match="ancestor"):
        Issuer(forged, ik, root.chain).child_ca_path_length()


def test_validity_fails_fast() -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(InvalidInput):
        Validity(now, now - dt.timedelta(seconds=1))
    with pytest.raises(InvalidInput):
        Validity(now, now)
    with pytest.raises(TypeError):
        Validity(dt.datetime(2024, 1, 1), dt.datetime(2025, 1, 1))  # naive
    with pytest.raises(InvalidInput):
        Validity.days(0)
    with pytest.raises(TypeError):
        Validity.days("10")  # type: ignore[arg-type]


def test_child_may_not_outlive_issuer(hierarchy: Any) -> None:
    key = generate_private_key()
    with pytest.raises(InvalidInput, match="after its issuer"):
        issue_device_certificate(hierarchy.line, "d", key.public_key(), Validity.days(5000))
    cert = issue_device_certificate(hierarchy.line, "d", key.public_key(), Validity.days(5000), clamp=True)
    assert cert.not_valid_after_utc == hierarchy.line.certificate.not_valid_after_utc


def test_wrong_types_raise_at_the_call(hierarchy: Any) -> None:
    key = generate_private_key()
    with pytest.raises(TypeError):
        issue_device_certificate(hierarchy.line, "d", key, Validity.days(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        issue_device_certificate(hierarchy.line, "d", key.public_key(), 30)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Issuer(hierarchy.root_cert, b"key")  # type: ignore[arg-type]


def test_issuer_rejects_mismatched_key_and_leaf_certificates(hierarchy: Any) -> None:
    with pytest.raises(PkiError, match="does not match"):
        Issuer(hierarchy.root_cert, generate_private_key())
    key = generate_private_key()
    leaf = issue_device_certificate(hierarchy.line, "d", key.public_key(), Validity.days(1))
    with pytest.raises(PkiError, match="not a CA"):
        Issuer(leaf, key)
    assert "PRIVATE" not in repr(hierarchy.line) and "key" not in repr(hierarchy.line).lower()


def test_server_certificate(hierarchy: Any) -> None:
    key = generate_private_key()
    cert = issue_server_certificate(
        hierarchy.factory,
        key.public_key(),
        Validity.days(10),
        dns_names=["Localhost", "dps.example.test"],
        ip_addresses=["127.0.0.1", "::1"],
    )
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "dps.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(InvalidInput):
        issue_server_certificate(hierarchy.factory, key.public_key(), Validity.days(1))
    with pytest.raises(InvalidInput):
        issue_server_certificate(hierarchy.factory, key.public_key(), Validity.days(1), dns_names=["bad_name!"])


def test_server_identity_verifies_as_server() -> None:
    ident = create_server_identity(["localhost"], ["127.0.0.1"])
    verifier = PolicyBuilder().store(Store([ident.ca_certificate])).build_server_verifier(x509.DNSName("localhost"))
    assert verifier.verify(ident.certificate, [])[-1] == ident.ca_certificate


def test_verification_certificate(hierarchy: Any) -> None:
    key = generate_private_key()
    cert = issue_verification_certificate(hierarchy.root, " 3F2A9C ", key.public_key(), Validity.days(2))
    assert cert.subject.rfc4514_string() == "CN=3F2A9C"
    cert.verify_directly_issued_by(hierarchy.root_cert)
    with pytest.raises(InvalidInput):
        issue_verification_certificate(hierarchy.root, "", key.public_key(), Validity.days(2))


@pytest.mark.parametrize("issuer_spec", [KeySpec.P256, KeySpec.P384, KeySpec.RSA2048])
@pytest.mark.parametrize("device_spec", [KeySpec.P256, KeySpec.P384, KeySpec.RSA2048])
def test_template_encodes_exactly_the_builder_profile(
    issuer_spec: KeySpec, device_spec: KeySpec, hierarchy_factory: Any
) -> None:
    h = hierarchy_factory(spec=issuer_spec)
    dk = generate_private_key(device_spec)
    validity = Validity.days(30)
    ref = issue_device_certificate(h.line, "dev:7_x", dk.public_key(), validity)
    tpl = DeviceTemplate(h.line, validity, rsa_subject=device_spec is KeySpec.RSA2048)
    assert tpl.tbs(ref.serial_number, "dev:7_x", dk.public_key()) == ref.tbs_certificate_bytes
    cert = x509.load_der_x509_certificate(tpl.certificate_der(ref.serial_number, "dev:7_x", dk.public_key()))
    cert.verify_directly_issued_by(h.line.certificate)
    if issuer_spec is KeySpec.P384:
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)


def test_template_encodes_generalized_time_after_2049(hierarchy: Any) -> None:
    rk = generate_private_key()
    far = Validity(dt.datetime(2049, 12, 31, tzinfo=dt.UTC), dt.datetime(2051, 1, 1, tzinfo=dt.UTC))
    root_validity = Validity(far.not_before, dt.datetime(2060, 1, 1, tzinfo=dt.UTC))
    root = Issuer(create_root_ca("Far", rk, root_validity), rk)
    dk = generate_private_key()
    ref = issue_device_certificate(root, "d", dk.public_key(), far)
    assert DeviceTemplate(root, far).tbs(ref.serial_number, "d", dk.public_key()) == ref.tbs_certificate_bytes


def test_template_encodes_every_cn_length_as_the_builder(hierarchy: Any) -> None:
    # The subject's DER header is kept per CN length: each length must give the builder's bytes.
    validity = Validity.days(3)
    tpl = DeviceTemplate(hierarchy.line, validity)
    dk = generate_private_key()
    for length in (1, 2, 31, 63, 64):
        rid = "d" * length
        for _ in range(2):  # the second time from the kept header
            ref = issue_device_certificate(hierarchy.line, rid, dk.public_key(), validity)
            assert tpl.tbs(ref.serial_number, rid, dk.public_key()) == ref.tbs_certificate_bytes
