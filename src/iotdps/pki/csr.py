"""Signing a device's certificate signing request; the key never leaves the device or modem.

A CSR is attacker-controlled input. We check its self-signature (proof that the requester holds
the key), take only the public key and the CN from it, and apply our own device profile: any
extensions it requests (CA:TRUE, serverAuth, SANs...) are ignored, never copied.
"""

from __future__ import annotations

from cryptography import x509

from iotdps.errors import InvalidInput
from iotdps.ids import check_registration_id
from iotdps.pki.encoding import common_name, csr_signature_verifies, load_csr
from iotdps.pki.issuer import Issuer, Validity
from iotdps.pki.profiles import check_public_key, issue_device_certificate

__all__ = ["check_device_csr", "sign_device_csr"]


def check_device_csr(
    csr: x509.CertificateSigningRequest | bytes | str, expected_registration_id: str | None = None
) -> tuple[x509.CertificateSigningRequest, str]:
    """Parse (if needed) and vet a device CSR; return it with its registration id (its CN)."""
    req = csr if isinstance(csr, x509.CertificateSigningRequest) else load_csr(csr)
    if not csr_signature_verifies(req):
        raise InvalidInput("the CSR's signature does not verify: it was not signed by the key it carries")
    cns = req.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise InvalidInput("the CSR subject must contain exactly one CN (the registration id)")
    cn = common_name(req.subject)
    assert cn is not None  # one CN attribute exists
    check_registration_id(cn)
    if expected_registration_id is not None and cn != expected_registration_id:
        raise InvalidInput(f"the CSR's CN {cn!r} does not match the registration id {expected_registration_id!r}")
    try:
        pub = req.public_key()
    except Exception:
        raise InvalidInput("the CSR's public key is not supported") from None
    check_public_key(pub, "CSR public key")
    return req, cn


def sign_device_csr(
    issuer: Issuer,
    csr: x509.CertificateSigningRequest | bytes | str,
    validity: Validity,
    *,
    expected_registration_id: str | None = None,
    clamp: bool = False,
) -> x509.Certificate:
    """Issue a device certificate for the key in `csr` (PEM, DER, base64 DER or parsed)."""
    req, registration_id = check_device_csr(csr, expected_registration_id)
    return issue_device_certificate(issuer, registration_id, req.public_key(), validity, clamp=clamp)
