"""Facts of one certificate and the link between two: CA or not, who issued it, a short name.

Three short names, one per audience: `describe` ("CN=factory-a (sha256 1A2B...)") for the
refusal log and `iotdps explain`, where two CAs of one name must be told apart;
`certificate_label` ("CN=factory-a") in the chain policy's rules; `describe_certificate`
("'factory-a'") in `iotdps cert verify`'s report on a device bundle.

Loading, thumbprints (upper-case hex, as the Azure APIs print them) and the Azure
X509CertificateInfo are `iotdps.pki.encoding`'s; walking from a certificate to a trust anchor is
`iotdps.pki.path`'s, on top of `signed_by` here.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from iotdps.pki.encoding import common_name as _name_cn
from iotdps.pki.encoding import sha256_thumbprint

__all__ = [
    "certificate_label",
    "common_name",
    "describe",
    "describe_certificate",
    "is_ca",
    "is_self_issued",
    "names_issuer",
    "not_after",
    "not_before",
    "signed_by",
    "to_pem",
]


def to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def common_name(cert: x509.Certificate) -> str | None:
    return _name_cn(cert.subject)


def not_before(cert: x509.Certificate) -> datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


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


# signed_by answers, keyed by both certificates' SHA-256 thumbprints (which fix the answer):
# every X.509 registration checks the same CA links again (a root's self-signature, an
# intermediate's issuer), and a signature check costs far more. Bounded; cleared when full.
_SIGNED_BY: dict[tuple[str, str], bool] = {}
_SIGNED_BY_MAX = 4096


def signed_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` names and signed `child` (the signature is checked)."""
    if not names_issuer(child, issuer):
        return False
    key = (sha256_thumbprint(child), sha256_thumbprint(issuer))
    known = _SIGNED_BY.get(key)
    if known is not None:
        return known
    try:
        child.verify_directly_issued_by(issuer)
        answer = True
    except (InvalidSignature, ValueError, TypeError):  # TypeError: an unsupported key type
        answer = False
    if len(_SIGNED_BY) >= _SIGNED_BY_MAX:
        _SIGNED_BY.clear()
    _SIGNED_BY[key] = answer
    return answer


def describe(cert: x509.Certificate) -> str:
    """A short operator-facing name: `CN=factory-a (sha256 1A2B3C4D...)`."""
    cn = common_name(cert)
    name = f"CN={cn}" if cn is not None else cert.subject.rfc4514_string() or "(empty subject)"
    return f"{name} (sha256 {sha256_thumbprint(cert)[:16]}...)"


def certificate_label(cert: x509.Certificate) -> str:
    """`CN=name`, or the whole subject when it has no CN."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        value = cns[-1].value
        return "CN=" + (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return cert.subject.rfc4514_string() or "(empty subject)"


def describe_certificate(cert: x509.Certificate) -> str:
    """A short human label: the CN if there is one, else the whole subject."""
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns:
        v = cns[-1].value
        return repr(v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    return repr(cert.subject.rfc4514_string() or "(empty subject)")
