from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotdps.errors import BadPassphrase, InvalidInput, InvalidRegistrationId
from iotdps.pki import (
    KeySpec,
    Validity,
    certificate_info,
    der_b64,
    encode_private_key,
    generate_private_key,
    issue_device_certificate,
    load_certificate,
    load_certificates,
    load_private_key,
    sign_device_csr,
)
from iotdps.secret import Secret


@pytest.mark.parametrize(
    ("text", "spec"),
    [("p256", KeySpec.P256), ("P-384", KeySpec.P384), ("rsa3072", KeySpec.RSA3072), ("ecdsa", KeySpec.P256)],
)
def test_key_spec_parse(text: str, spec: KeySpec) -> None:
    assert KeySpec.parse(text) is spec


def test_unknown_key_spec() -> None:
    with pytest.raises(InvalidInput, match="unknown key type"):
        KeySpec.parse("dsa")


def test_encrypted_pkcs8_round_trip_and_wrong_passphrase() -> None:
    key = generate_private_key(KeySpec.P384)
    pem = encode_private_key(key, Secret("correct horse"))
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_private_key(pem, Secret("correct horse"))
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    with pytest.raises(BadPassphrase) as exc:
        load_private_key(pem, Secret("battery staple"))
    assert "battery" not in str(exc.value)
    with pytest.raises(BadPassphrase, match="no passphrase"):
        load_private_key(pem, None)
    with pytest.raises(InvalidInput):
        encode_private_key(key, Secret(""))


def test_garbage_key() -> None:
    with pytest.raises(InvalidInput):
        load_private_key(b"not a key", None)


def test_load_pem_der_base64(hierarchy: Any) -> None:
    cert = hierarchy.line.certificate
    pem = cert.public_bytes(serialization.Encoding.PEM)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert load_certificate(pem) == cert
    assert load_certificate(der) == cert
    assert load_certificate(der_b64(cert)) == cert
    assert load_certificate(base64.encodebytes(der)) == cert  # base64 with newlines
    bundle = pem + hierarchy.factory.certificate.public_bytes(serialization.Encoding.PEM)
    assert load_certificates(bundle) == [cert, hierarchy.factory.certificate]
    with pytest.raises(InvalidInput):
        load_certificates(b"%%% not a cert")
    with pytest.raises(InvalidInput):
        load_certificates(base64.b64encode(b"\x30\x03abc"))


def test_certificate_info(hierarchy: Any) -> None:
    key = generate_private_key()
    cert = issue_device_certificate(hierarchy.line, "dev-9", key.public_key(), Validity.days(3))
    info = certificate_info(cert)
    assert info["subjectName"] == "CN=dev-9"
    assert info["issuerName"] == "CN=line-1"
    assert info["sha1Thumbprint"] == cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert info["sha256Thumbprint"] == cert.fingerprint(hashes.SHA256()).hex().upper()
    assert int(info["serialNumber"], 16) == cert.serial_number
    assert info["version"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["notAfterUtc"])


def _csr(cn: str, key: ec.EllipticCurvePrivateKey, *, ca: bool = False) -> x509.CertificateSigningRequest:
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False
        )
    return b.sign(key, hashes.SHA256())


def test_csr_requested_extensions_are_ignored(hierarchy: Any) -> None:
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = _csr("modem-1", key, ca=True)
    cert = sign_device_csr(hierarchy.line, csr.public_bytes(serialization.Encoding.PEM), Validity.days(5))
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=modem-1"
    # base64 DER, the form the DPS CSR preview sends
    der = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    assert sign_device_csr(hierarchy.line, der, Validity.days(5)).subject == cert.subject


def test_csr_checks(hierarchy: Any) -> None:
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with pytest.raises(InvalidRegistrationId):
        sign_device_csr(hierarchy.line, _csr("bad id", key), Validity.days(5))
    with pytest.raises(InvalidInput, match="does not match"):
        sign_device_csr(hierarchy.line, _csr("dev-1", key), Validity.days(5), expected_registration_id="dev-2")
    with pytest.raises(InvalidInput, match="certificate signing request"):
        sign_device_csr(
            hierarchy.line,
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            Validity.days(5),
        )
    # Tamper with the signed content: the CSR's self-signature must no longer verify.
    der = bytearray(_csr("dev-1", key).public_bytes(serialization.Encoding.DER))
    i = der.find(b"dev-1")
    der[i : i + 5] = b"dev-2"
    with pytest.raises(InvalidInput, match="signature does not verify"):
        sign_device_csr(hierarchy.line, bytes(der), Validity.days(5))


def test_der_ending_in_whitespace_bytes_loads(hierarchy: Any) -> None:
    # A DER certificate's last byte is part of its signature and may be 0x20, 0x0A...: loading
    # must not strip it. Reissue until one ends in an ASCII whitespace byte (bounded).
    for _ in range(2000):
        key = generate_private_key()
        cert = issue_device_certificate(hierarchy.line, "dev-ws", key.public_key(), Validity.days(3))
        der = cert.public_bytes(serialization.Encoding.DER)
        if der[-1:] in (b" ", b"\n", b"\r", b"\t", b"\x0b", b"\x0c"):
            break
    else:
        pytest.fail("no certificate ending in a whitespace byte in 2000 tries")
    assert load_certificate(der) == cert
