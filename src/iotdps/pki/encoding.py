"""Reading certificates in whatever form they arrive, and describing them the Azure way.

Devices, operators and the Azure APIs hand us certificates as PEM (possibly a bundle), DER, or
base64 of DER without PEM armour (the DPS enrollment APIs and the CSR preview do that). One
loader accepts all three so no caller has to guess.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from typing import TypedDict

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import InvalidInput

__all__ = [
    "X509CertificateInfo",
    "certificate_info",
    "certs_to_pem",
    "common_name",
    "csr_signature_verifies",
    "der_b64",
    "der_thumbprints",
    "load_certificate",
    "load_certificates",
    "load_csr",
    "name_to_text",
    "remember_thumbprints",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "utc_text",
]


class X509CertificateInfo(TypedDict):
    """The `info` object of a DPS certificate slot (azure-wire-protocol.md 4.4)."""

    subjectName: str
    sha1Thumbprint: str
    sha256Thumbprint: str
    issuerName: str
    notBeforeUtc: str
    notAfterUtc: str
    serialNumber: str
    version: int


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)


def _pem_or_der_blobs(raw: bytes, label: bytes) -> tuple[str, bytes]:
    """Classify input as ("pem", raw) or ("der", der bytes); base64 text becomes DER."""
    # DER is binary: its last bytes may well be 0x20 or 0x0A, so it is never stripped
    # (stripping corrupted about 1 certificate in 40).
    if raw[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER as is
        return "der", raw
    stripped = raw.strip()
    if b"-----BEGIN" in stripped:
        return "pem", stripped
    try:
        der = base64.b64decode(b"".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"not a PEM, DER or base64 {label.decode()}") from None
    if not der:
        raise InvalidInput(f"empty {label.decode()}")
    return "der", der


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in `data` (PEM bundle, DER, or base64 DER), in file order."""
    kind, blob = _pem_or_der_blobs(_as_bytes(data), b"certificate")
    try:
        if kind == "pem":
            certs = x509.load_pem_x509_certificates(blob)
        else:
            certs = [x509.load_der_x509_certificate(blob)]
    except ValueError:
        raise InvalidInput("the data is not a valid X.509 certificate") from None
    if not certs:
        raise InvalidInput("no certificate found")
    return certs


def load_certificate(data: bytes | str) -> x509.Certificate:
    """The first certificate in `data` (for a bundle, the leaf)."""
    return load_certificates(data)[0]


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from PEM, DER or base64 DER. The signature is NOT checked here."""
    kind, blob = _pem_or_der_blobs(_as_bytes(data), b"certificate signing request")
    try:
        if kind == "pem":
            return x509.load_pem_x509_csr(blob)
        return x509.load_der_x509_csr(blob)
    except ValueError:
        raise InvalidInput("the data is not a valid PKCS#10 certificate signing request") from None


def csr_signature_verifies(req: x509.CertificateSigningRequest) -> bool:
    """Whether the request's self-signature verifies with the key it carries. An unsupported
    signature algorithm raises inside cryptography; it is as good as a bad signature."""
    try:
        return bool(req.is_signature_valid)
    except Exception:
        return False


def certs_to_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def der_b64(cert: x509.Certificate) -> str:
    """Base64 of the DER encoding, no armour or newlines (the DPS API and CSR-preview form)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


# Thumbprints memoised by certificate (equal DER, equal key): an X.509 registration asks for
# its chain's CAs a dozen times, and computing one re-encodes the certificate to DER (about
# 5 us). The TLS layer, which has each peer certificate's DER at hand, fills this in as it
# parses them (`remember_thumbprints`). Bounded: emptied when full.
_THUMBPRINTS: dict[x509.Certificate, tuple[str, str]] = {}
_THUMBPRINTS_MAX = 4096


def der_thumbprints(der: bytes) -> tuple[str, str]:
    """(SHA-1, SHA-256) thumbprints of a DER certificate: upper-case hex, as Azure shows them."""
    return (
        hashlib.sha1(der, usedforsecurity=False).hexdigest().upper(),  # a thumbprint, not a signature
        hashlib.sha256(der).hexdigest().upper(),
    )


def remember_thumbprints(cert: x509.Certificate, der: bytes) -> None:
    """Record the thumbprints of `cert`, whose DER encoding is `der`."""
    if len(_THUMBPRINTS) >= _THUMBPRINTS_MAX:
        _THUMBPRINTS.clear()
    _THUMBPRINTS[cert] = der_thumbprints(der)


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    found = _THUMBPRINTS.get(cert)
    if found is None:
        remember_thumbprints(cert, cert.public_bytes(serialization.Encoding.DER))
        found = _THUMBPRINTS[cert]
    return found


def sha1_thumbprint(cert: x509.Certificate) -> str:
    """Upper-case hex SHA-1 of the DER certificate, as Azure shows thumbprints."""
    return _thumbprints(cert)[0]


def sha256_thumbprint(cert: x509.Certificate) -> str:
    """Upper-case hex SHA-256 of the DER certificate."""
    return _thumbprints(cert)[1]


def common_name(name: x509.Name) -> str | None:
    """The (last) CN of a name, or None. A bytes-valued CN is decoded leniently."""
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[-1].value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def name_to_text(name: x509.Name) -> str:
    """`CN=dev-1, O=Contoso`: most specific first, as Azure (.NET) prints distinguished names."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


def utc_text(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_info(cert: x509.Certificate) -> X509CertificateInfo:
    """The Azure X509CertificateInfo of `cert`."""
    return {
        "subjectName": name_to_text(cert.subject),
        "sha1Thumbprint": sha1_thumbprint(cert),
        "sha256Thumbprint": sha256_thumbprint(cert),
        "issuerName": name_to_text(cert.issuer),
        "notBeforeUtc": utc_text(cert.not_valid_before_utc),
        "notAfterUtc": utc_text(cert.not_valid_after_utc),
        "serialNumber": format(cert.serial_number, "X"),
        "version": 3 if cert.version is x509.Version.v3 else 1,
    }
