"""csr_policy: every refusal with its code, the encodings the two previews use, and the issuance
policy's JSON."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from iotdps.errors import InvalidInput
from iotdps.pki.csr_policy import (
    DEFAULT_KEY_TYPES,
    MAX_CSR_TEXT,
    AcceptedCsr,
    CsrRefusal,
    CsrRefused,
    CsrRequirement,
    IssuancePolicy,
    KeyType,
    parse_csr_text,
    vet_csr,
)
from iotdps_testing.issuance import csr_b64, make_csr

RID = "dev-1"


def refusal(csr: Any, registration_id: str = RID, **kw: Any) -> CsrRefused:
    with pytest.raises(CsrRefused) as caught:
        vet_csr(csr, registration_id, **kw)
    return caught.value


def pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --------------------------------------------------------------------------- accepted forms


def test_base64_der_is_accepted_as_2025_preview_sends_it() -> None:
    csr = make_csr(RID)
    accepted = vet_csr(csr_b64(csr), RID)
    assert isinstance(accepted, AcceptedCsr)
    assert accepted.registration_id == RID
    assert accepted.key_type is KeyType.EC_P256
    assert accepted.der == csr.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(lambda p: p, id="pem-lf"),
        pytest.param(lambda p: p.replace("\n", "\r\n"), id="pem-crlf"),
        # The 2021-11-01-preview REST spec's example: armour, no line breaks at all.
        pytest.param(lambda p: p.replace("\n", ""), id="pem-one-line"),
    ],
)
def test_pem_forms_are_accepted_for_the_2021_preview(render: Any) -> None:
    csr = make_csr(RID)
    assert vet_csr(render(pem(csr)), RID).csr == csr


def test_bytes_input_is_accepted() -> None:
    assert vet_csr(csr_b64(make_csr(RID)).encode("ascii"), RID).registration_id == RID


def test_requested_extensions_that_are_not_ca_rights_are_accepted() -> None:
    # The spec's example CSR asks for CA:FALSE and a SAN; neither is a reason to refuse
    # (the issuers do not copy them).
    csr = make_csr(
        RID,
        extensions=[
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.SubjectAlternativeName([x509.DNSName("contoso.com")]), False),
        ],
    )
    assert vet_csr(csr_b64(csr), RID).registration_id == RID


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), KeyType.EC_P384),
        (lambda: rsa.generate_private_key(65537, 2048), KeyType.RSA_2048),
        (lambda: rsa.generate_private_key(65537, 3072), KeyType.RSA_3072),
    ],
)
def test_key_types_are_classified(key: Any, expected: KeyType) -> None:
    assert vet_csr(make_csr(RID, key()), RID).key_type is expected


# --------------------------------------------------------------------------- refusals


def test_too_large_is_refused_before_decoding() -> None:
    err = refusal("A" * (MAX_CSR_TEXT + 1))
    assert err.reason is CsrRefusal.TOO_LARGE
    assert str(MAX_CSR_TEXT) in err.message


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!",
        base64.b64encode(b"\x30\x03\x02\x01\x00").decode(),  # DER, but not PKCS#10
        "",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",  # wrong armour
    ],
)
def test_malformed_is_refused(text: str) -> None:
    assert refusal(text).reason is CsrRefusal.MALFORMED


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="p521"),
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa1024"),  # noqa: S505 (the weak key refused)
        pytest.param(lambda: rsa.generate_private_key(65537, 2560), id="rsa2560-not-listed"),
    ],
)
def test_key_outside_the_list_is_refused(key: Any) -> None:
    err = refusal(csr_b64(make_csr(RID, key())))
    assert err.reason is CsrRefusal.KEY_NOT_ACCEPTED
    assert "not an accepted key type" in err.message


def test_ed25519_key_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, RID)]))
        .sign(key, None)
    )
    assert refusal(csr).reason is CsrRefusal.KEY_NOT_ACCEPTED


def test_key_type_the_policy_does_not_list_is_refused() -> None:
    csr = make_csr(RID, rsa.generate_private_key(65537, 2048))
    err = refusal(csr, accepted_key_types={KeyType.EC_P256})
    assert err.reason is CsrRefusal.KEY_NOT_ACCEPTED
    assert "RSA 2048" in err.message and "ecP256" in err.message


def test_bad_signature_is_refused() -> None:
    der = bytearray(make_csr(RID).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's r or s: still parses, no longer verifies
    err = refusal(base64.b64encode(bytes(der)).decode())
    assert err.reason is CsrRefusal.BAD_SIGNATURE


def test_signature_by_another_key_is_refused() -> None:
    # The CSR carries key A's public key but is signed by key B.
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    by_b = make_csr(RID, b)
    info_a = make_csr(RID, a).tbs_certrequest_bytes
    forged = bytearray(by_b.public_bytes(serialization.Encoding.DER))
    # Swap in A's CertificationRequestInfo only when the lengths agree (both P-256, same CN).
    old = by_b.tbs_certrequest_bytes
    assert len(old) == len(info_a)
    at = bytes(forged).index(old)
    forged[at : at + len(old)] = info_a
    assert refusal(base64.b64encode(bytes(forged)).decode()).reason is CsrRefusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("cn", "extra"),
    [
        pytest.param("dev-2", (), id="other-id"),
        pytest.param("Dev-1", (), id="case-differs"),
        pytest.param(None, (), id="no-cn"),
        pytest.param(RID, (x509.NameAttribute(x509.NameOID.COMMON_NAME, RID),), id="two-cns"),
    ],
)
def test_cn_that_is_not_the_registration_id_is_refused(cn: str | None, extra: Any) -> None:
    err = refusal(make_csr(cn, extra_names=extra))
    assert err.reason is CsrRefusal.CN_MISMATCH


def test_cn_comparison_hook_can_fold_case() -> None:
    accepted = vet_csr(make_csr("Dev-1"), RID, same_id=lambda a, b: a.lower() == b.lower())
    assert accepted.registration_id == "Dev-1"


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
def test_cn_too_long_for_a_certificate_is_refused() -> None:
    long_id = "d" * 65  # a valid registration id (<= 128) that no certificate CN can carry
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, long_id, _validate=False)]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    assert refusal(csr, long_id).reason is CsrRefusal.CN_MISMATCH


@pytest.mark.parametrize(
    ("extension", "words"),
    [
        pytest.param(x509.BasicConstraints(ca=True, path_length=None), "CA:TRUE", id="ca-true"),
        pytest.param(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), "keyCertSign", id="cert-sign"
        ),
        pytest.param(x509.KeyUsage(True, False, False, False, False, False, True, False, False), "cRLSign", id="crl"),
    ],
)
def test_csr_asking_for_ca_rights_is_refused(extension: x509.ExtensionType, words: str) -> None:
    err = refusal(make_csr(RID, extensions=[(extension, True)]))
    assert err.reason is CsrRefusal.REQUESTS_CA
    assert words in err.message


def test_refusals_are_invalid_input_with_a_code() -> None:
    err = refusal(make_csr("dev-2"))
    assert isinstance(err, InvalidInput) and err.http_status == 400
    assert err.reason.value == "CSR_CN_MISMATCH"


def test_parse_does_not_check_the_signature() -> None:
    der = bytearray(make_csr(RID).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    parsed = parse_csr_text(base64.b64encode(bytes(der)))
    assert not parsed.is_signature_valid


# --------------------------------------------------------------------------- policy JSON


def test_policy_json_round_trip() -> None:
    policy = IssuancePolicy("factory-ca", 90, frozenset({KeyType.RSA_3072, KeyType.EC_P256}), CsrRequirement.OPTIONAL)
    doc = policy.to_json()
    assert doc == {
        "certificateAuthorityName": "factory-ca",
        "validityInDays": 90,
        "acceptedKeyTypes": ["ecP256", "rsa3072"],
        "csrRequirement": "optional",
        "keepExistingCredential": False,
    }
    assert IssuancePolicy.from_json(doc) == policy
    assert policy.profile.validity_days == 90
    kept = IssuancePolicy("factory-ca", keep_existing_credential=True)
    assert kept.to_json()["keepExistingCredential"] is True
    assert IssuancePolicy.from_json(kept.to_json()) == kept


def test_azures_one_field_policy_gets_defaults() -> None:
    policy = IssuancePolicy.from_json({"certificateAuthorityName": "ca1"})
    assert policy.validity_days == 30
    assert policy.accepted_key_types == DEFAULT_KEY_TYPES
    assert policy.csr_requirement is CsrRequirement.REQUIRED
    assert policy.keep_existing_credential is False  # secure default: the issued certificate alone


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"certificateAuthorityName": "ca1", "validityDays": 3}, "unknown field"),
        ({}, "certificateAuthorityName must be a string"),
        ({"certificateAuthorityName": "../etc"}, "invalid CA name"),
        ({"certificateAuthorityName": "ca1", "validityInDays": 0}, "between 1 and"),
        ({"certificateAuthorityName": "ca1", "validityInDays": 36500}, "between 1 and"),
        ({"certificateAuthorityName": "ca1", "validityInDays": True}, "integer"),
        ({"certificateAuthorityName": "ca1", "acceptedKeyTypes": []}, "empty"),
        ({"certificateAuthorityName": "ca1", "acceptedKeyTypes": ["dsa1024"]}, "unknown key type"),
        ({"certificateAuthorityName": "ca1", "acceptedKeyTypes": "ecP256"}, "list of strings"),
        ({"certificateAuthorityName": "ca1", "csrRequirement": "maybe"}, "'required' or 'optional'"),
        ({"certificateAuthorityName": "ca1", "keepExistingCredential": "yes"}, "keepExistingCredential must be true"),
        ({"certificateAuthorityName": "ca1", "keepExistingCredential": 1}, "keepExistingCredential must be true"),
        ({"certificateAuthorityName": "ca1", "keepExistingCredential": None}, "keepExistingCredential must be true"),
        ([], "must be an object"),
    ],
)
def test_bad_policy_documents_are_refused(doc: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        IssuancePolicy.from_json(doc)
