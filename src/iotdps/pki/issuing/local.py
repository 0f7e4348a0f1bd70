"""An issuing CA whose key iotdps holds: a decrypted key file (`Issuer`) or any `Signer` (a
PKCS#11 token's key, through pki/external_signing).

The device certificate is the toolkit's device profile (`profiles.issue_device_certificate`,
the profile `create-device-cert --csr` signs with): CN = registration id, clientAuth,
digitalSignature, nothing copied from the CSR but its key. Its validity is the policy's,
pulled in to the CA's own end (a device certificate must not outlive its CA, and refusing
every registration in a CA's last month would be worse than shorter certificates).

A Signer cannot sit in an `Issuer` (which holds a private key object), so the profile builds
the certificate against a stand-in: a throwaway self-signed certificate with the real CA's
subject, validity and key identifier, and a throwaway key of the signer's algorithm. What
the profile produces then differs from the real thing only in its signature; the
to-be-signed bytes are re-signed by the Signer (external_signing.signed_der, which verifies
the signature with the signer's public key). The profile stays defined once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotdps.errors import InvalidInput, PkiError
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile
from iotdps.pki.external_signing import ECDSA_SHA256, ECDSA_SHA384, Signer, signed_der
from iotdps.pki.issuer import Issuer, Validity, signature_hash
from iotdps.pki.issuing.base import IssuanceError, IssuanceFailure, IssuedChain, check_ca_chain, check_issued
from iotdps.pki.keys import PrivateKey, public_keys_match
from iotdps.pki.profiles import issue_device_certificate

__all__ = ["LocalIssuer"]


def _throwaway_key(signer: Signer) -> PrivateKey:
    algorithm = signer.algorithm
    if algorithm == ECDSA_SHA384:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm == ECDSA_SHA256:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)  # signature_hash: SHA-256


def _stand_in(ca: x509.Certificate, signer: Signer) -> Issuer:
    """An Issuer that makes the profile produce `ca`'s to-be-signed certificates (see module doc)."""
    key = _throwaway_key(signer)
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # What Issuer would derive for the real key: RFC 5280 method 1 over the CA's public key.
        ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(ca.not_valid_after_utc)
        .add_extension(ski, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    )
    return Issuer(builder.sign(key, signature_hash(key)), key)


class LocalIssuer:
    """A CertificateIssuer over a CA iotdps holds; `ca_chain` must end at its root."""

    kind = "local"

    def __init__(self, name: str, ca: Issuer) -> None:
        if not isinstance(ca, Issuer):
            raise TypeError("ca must be an Issuer; use LocalIssuer.with_signer for a Signer")
        self._name = check_ca_name(name)
        self._chain = check_ca_chain(ca.chain, f"issuing CA {name!r}")
        self._issuer = ca
        self._signer: Signer | None = None

    @classmethod
    def with_signer(cls, name: str, signer: Signer, chain: Sequence[x509.Certificate]) -> LocalIssuer:
        """An issuer whose key is `signer` (an HSM key, say); `chain` is the CA's certificate,
        then its parents, ending at the root."""
        if not isinstance(signer, Signer):
            raise TypeError("signer must be a Signer")
        certs = check_ca_chain(chain, f"issuing CA {name!r}")
        if not public_keys_match(signer.public_key(), certs[0].public_key()):
            raise PkiError(
                f"issuing CA {name!r}: the signing key is not the key of {certs[0].subject.rfc4514_string()!r}"
            )
        self = cls.__new__(cls)
        self._name = check_ca_name(name)
        self._chain = certs
        self._issuer = _stand_in(certs[0], signer)
        self._signer = signer
        return self

    def __repr__(self) -> str:
        custody = "signer" if self._signer is not None else "key file"
        return f"LocalIssuer(name={self._name!r}, ca={self._chain[0].subject.rfc4514_string()!r}, {custody})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def _refuse_if_expired(self, now: dt.datetime) -> None:
        for cert in self._chain:
            if now > cert.not_valid_after_utc:
                raise IssuanceError(
                    IssuanceFailure.CA_REFUSED,
                    self._name,
                    f"CA certificate {cert.subject.rfc4514_string()!r} expired at {cert.not_valid_after_utc:%Y-%m-%d}",
                )
            if now < cert.not_valid_before_utc:
                raise IssuanceError(
                    IssuanceFailure.CA_REFUSED,
                    self._name,
                    f"CA certificate {cert.subject.rfc4514_string()!r} is not valid before "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z",
                )

    def _sign(self, csr: AcceptedCsr, validity: Validity) -> x509.Certificate:
        draft = issue_device_certificate(self._issuer, csr.registration_id, csr.public_key(), validity, clamp=True)
        if self._signer is None:
            return draft
        if draft.signature_algorithm_oid != self._signer.algorithm.oid:
            raise PkiError("the stand-in CA signed with another algorithm than the signer's")
        return x509.load_der_x509_certificate(signed_der(draft.tbs_certificate_bytes, self._signer))

    async def issue(self, csr: AcceptedCsr, profile: IssuanceProfile) -> IssuedChain:
        if not isinstance(csr, AcceptedCsr):
            raise TypeError("issue() takes an AcceptedCsr (from csr_policy.vet_csr)")
        now = dt.datetime.now(dt.UTC)
        self._refuse_if_expired(now)
        validity = Validity.days(profile.validity_days, now=now)
        try:
            if self._signer is None:
                leaf = self._sign(csr, validity)
            else:
                # A token call blocks (and may be slow); keep it off the event loop.
                leaf = await asyncio.to_thread(self._sign, csr, validity)
        except InvalidInput as exc:
            raise IssuanceError(IssuanceFailure.CA_REFUSED, self._name, exc.message) from None
        except PkiError as exc:
            raise IssuanceError(
                IssuanceFailure.CA_UNREACHABLE, self._name, f"the CA key could not sign: {exc.message}"
            ) from None
        return check_issued(self._name, leaf, self._chain, csr, profile, now=now)

    async def close(self) -> None:
        return None
