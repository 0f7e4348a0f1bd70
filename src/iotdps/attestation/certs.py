"""Small certificate helpers the provisioning core needs: loading, thumbprints, names.

Kept here (not in `iotdps.pki`) so the core does not depend on the CA toolkit while both are
written in parallel; the duplicates are meant to be folded together at merge.
Thumbprints are upper-case hex, as the Azure APIs print them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from iotdps.errors import InvalidInput

__all__ = [
    "certificate_info",
    "common_name",
    "describe",
    "is_ca",
    "is_self_issued",
    "load_certificate",
    "load_certificates",
    "names_issuer",
    "not_after",
    "not_before",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "signed_by",
    "to_pem",
]

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in `data`: PEM (one or many), DER, or base64 of DER.

    Azure accepts "PEM or base64 DER" in certificate slots, so all three are taken.
    """
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    blocks = _PEM_BLOCK.findall(raw)
    if blocks:
        try:
            return [x509.load_pem_x509_certificate(block) for block in blocks]
        except ValueError as exc:
            raise InvalidInput("a PEM certificate block does not parse") from exc
    try:
        return [x509.load_der_x509_certificate(raw)]
    except ValueError:
        pass
    try:
        der = base64.b64decode(b"".join(raw.split()), validate=True)
        return [x509.load_der_x509_certificate(der)]
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("not a certificate (expected PEM, DER or base64 DER)") from exc


def load_certificate(data: bytes | str) -> x509.Certificate:
    """Exactly one certificate (the first, when a bundle is given)."""
    certs = load_certificates(data)
    if not certs:
        raise InvalidInput("no certificate found")
    return certs[0]


def to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def sha256_thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def sha1_thumbprint(cert: x509.Certificate) -> str:
    # SHA-1 here is an identifier the Azure APIs and the hub expect, not a security primitive.
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def not_before(cert: x509.Certificate) -> datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _key_id(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(ext, x509.SubjectKeyIdentifier):
        return ext.digest
    if isinstance(ext, x509.AuthorityKeyIdentifier):
        return ext.key_identifier
    return None


def names_issuer(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name matches, and AKI/SKI too when both are present (a cheap pre-filter)."""
    if child.issuer != issuer.subject:
        return False
    aki = _key_id(child, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
    ski = _key_id(issuer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    return aki is None or ski is None or aki == ski


def signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` names and signed `child` (the signature is checked)."""
    if not names_issuer(child, issuer):
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # TypeError: an unsupported key type
        return False
    return True


def describe(cert: x509.Certificate) -> str:
    """A short operator-facing name: `CN=factory-a (sha256 1A2B3C4D...)`."""
    cn = common_name(cert)
    name = f"CN={cn}" if cn is not None else cert.subject.rfc4514_string() or "(empty subject)"
    return f"{name} (sha256 {sha256_thumbprint(cert)[:16]}...)"


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_info(cert: x509.Certificate) -> Mapping[str, Any]:
    """The Azure X509CertificateInfo object (subject and issuer as RFC 4514 strings)."""
    return {
        "subjectName": cert.subject.rfc4514_string(),
        "sha1Thumbprint": sha1_thumbprint(cert),
        "sha256Thumbprint": sha256_thumbprint(cert),
        "issuerName": cert.issuer.rfc4514_string(),
        "notBeforeUtc": _utc(cert.not_valid_before_utc),
        "notAfterUtc": _utc(cert.not_valid_after_utc),
        "serialNumber": format(cert.serial_number, "X"),
        "version": cert.version.value + 1,
    }
