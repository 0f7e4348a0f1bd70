"""The seam every issuing CA plugs into: `CertificateIssuer`, its result and its one error.

An issuing CA is a named object the operator configures (the "CA object" of seed 002's
diagram); an enrollment's issuance policy names it. Whatever the CA is (a key iotdps holds, a
CFSSL server, later ACME/EST or a cloud CA), the registration pipeline sees the same thing:
`await issuer.issue(accepted_csr, profile)` returns an `IssuedChain` or raises `IssuanceError`
with one of three reasons, which later become registration refusal reasons.

`check_issued` is applied to every chain before it is returned, whoever made it: the leaf must
carry the CSR's key and the registration id, be a client certificate that is no CA, fit in the
policy's validity, and chain by signature through the configured intermediates to the root. A
remote CA that answers with something else (wrong key, its default profile, a stale chain) is a
bad response, not a certificate we hand to a device.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotdps.errors import IotdpsError, PkiError
from iotdps.pki.certs import is_self_issued
from iotdps.pki.csr_policy import AcceptedCsr, IssuanceProfile
from iotdps.pki.encoding import common_name, der_b64, sha1_thumbprint, sha256_thumbprint
from iotdps.pki.issuer import CLOCK_SKEW
from iotdps.pki.keys import public_keys_match
from iotdps.pki.trust_bundle import wire_pem

__all__ = [
    "CertificateIssuer",
    "IssuanceError",
    "IssuanceFailure",
    "IssuedChain",
    "check_ca_chain",
    "check_issued",
]


class IssuanceFailure(enum.StrEnum):
    """Why no certificate came back. Stable codes; the words live with each error."""

    CA_UNREACHABLE = "CA_UNREACHABLE"  # no answer: connection refused, timeout, 5xx; worth retrying
    CA_REFUSED = "CA_REFUSED"  # the CA answered no (bad auth, its policy, an expired local CA)
    CA_BAD_RESPONSE = "CA_BAD_RESPONSE"  # an answer that is not a usable certificate for this CSR


class IssuanceError(IotdpsError):
    """An issuing CA did not issue. `message` is for operators (never key material or the API
    key); devices get a terse answer chosen by their edge from `reason`."""

    http_status = 502

    def __init__(self, reason: IssuanceFailure, issuer: str, message: str) -> None:
        super().__init__(f"issuing CA {issuer!r}: {message}")
        self.reason = reason
        self.issuer = issuer

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later without anyone changing configuration."""
        return self.reason is IssuanceFailure.CA_UNREACHABLE


@dataclass(frozen=True)
class IssuedChain:
    """A device certificate and the chain above it, leaf first, ending at the root."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    root: x509.Certificate
    issuer_name: str  # the issuing CA object that made it (for the issued-certificate record)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        return (self.leaf, *self.intermediates, self.root)

    @property
    def serial_number(self) -> str:
        """Upper-case hex, as certificate_info and Azure show serials."""
        return format(self.leaf.serial_number, "X")

    @property
    def sha1_thumbprint(self) -> str:
        return sha1_thumbprint(self.leaf)

    @property
    def sha256_thumbprint(self) -> str:
        return sha256_thumbprint(self.leaf)

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def issued_certificate_chain(self) -> list[str]:
        """`registrationState.issuedCertificateChain` of api-version 2025-07-01-preview (10.1):
        base64 DER without armour, leaf first, then intermediates, ending at the root."""
        return [der_b64(c) for c in self.certificates]

    def issued_client_certificate(self) -> str:
        """`registrationState.issuedClientCertificate` of api-version 2021-11-01-preview (10.2):
        the leaf as PEM with CRLF line ends, as DPS writes it (JSON escapes them as \\r\\n)."""
        return wire_pem(self.leaf)

    def chain_pem(self) -> bytes:
        """Leaf, intermediates and root as one PEM bundle (for files and `openssl verify`)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates)


@runtime_checkable
class CertificateIssuer(Protocol):
    """An issuing CA. Implementations: LocalIssuer (a key iotdps holds), CfsslIssuer (a CFSSL
    server). Another kind (ACME, EST, a cloud CA) is one more class with these members."""

    @property
    def name(self) -> str:
        """The CA object's name, as issuance policies refer to it."""
        ...

    @property
    def kind(self) -> str:
        """A short word for operators and records: "local", "cfssl"."""
        ...

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        """The issuing CA's certificate, its parents, ending at the root: what a trust bundle
        for devices with these certificates must contain (at least the root)."""
        ...

    async def issue(self, csr: AcceptedCsr, profile: IssuanceProfile) -> IssuedChain:
        """Issue a device certificate for a vetted CSR; IssuanceError if none is issued."""
        ...

    async def close(self) -> None:
        """Release connections; an issuer is not used after this."""
        ...


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def check_ca_chain(chain: Sequence[x509.Certificate], what: str) -> tuple[x509.Certificate, ...]:
    """A configured CA chain (issuing CA first, each next one its issuer, ending at a self-signed
    root) or PkiError saying which link is wrong. Checked once at construction."""
    certs = tuple(chain)
    if not certs:
        raise PkiError(f"{what}: the CA chain is empty")
    for i, cert in enumerate(certs):
        if not isinstance(cert, x509.Certificate):
            raise TypeError(f"{what}: the CA chain must hold x509.Certificate objects")
        bc = _basic_constraints(cert)
        if bc is None or not bc.ca:
            raise PkiError(f"{what}: {cert.subject.rfc4514_string()!r} is not a CA certificate")
        parent = certs[i + 1] if i + 1 < len(certs) else cert
        if i + 1 == len(certs) and not is_self_issued(cert):
            raise PkiError(
                f"{what}: the CA chain must end at a self-signed root, not {cert.subject.rfc4514_string()!r}"
            )
        try:
            cert.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PkiError(
                f"{what}: {cert.subject.rfc4514_string()!r} is not signed by {parent.subject.rfc4514_string()!r}"
                f" ({type(exc).__name__})"
            ) from None
    return certs


def _bad(issuer: str, message: str) -> IssuanceError:
    return IssuanceError(IssuanceFailure.CA_BAD_RESPONSE, issuer, message)


def check_issued(
    issuer: str,
    leaf: x509.Certificate,
    ca_chain: tuple[x509.Certificate, ...],
    csr: AcceptedCsr,
    profile: IssuanceProfile,
    *,
    now: dt.datetime | None = None,
) -> IssuedChain:
    """The leaf as an IssuedChain under `ca_chain` (checked with check_ca_chain), or
    IssuanceError(CA_BAD_RESPONSE) naming what is wrong with it."""
    if not public_keys_match(leaf.public_key(), csr.public_key()):
        raise _bad(issuer, "the certificate does not carry the key of the CSR")
    cn = common_name(leaf.subject)
    if cn != csr.registration_id:
        raise _bad(issuer, f"the certificate's CN is {cn!r}, not the registration id {csr.registration_id!r}")
    bc = _basic_constraints(leaf)
    if bc is not None and bc.ca:
        raise _bad(issuer, "the certificate is a CA certificate")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            raise _bad(issuer, "the certificate's extended key usage lacks clientAuth (wrong CA profile?)")
    except x509.ExtensionNotFound:
        pass  # no EKU: any purpose, TLS client auth included
    when = now or dt.datetime.now(dt.UTC)
    longest = dt.timedelta(days=profile.validity_days) + 2 * CLOCK_SKEW
    if leaf.not_valid_after_utc - leaf.not_valid_before_utc > longest:
        days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
        raise _bad(
            issuer,
            f"the certificate is valid for {days} days, more than the policy's {profile.validity_days}"
            " (shorten the CA profile's expiry or lengthen the policy)",
        )
    if not leaf.not_valid_before_utc - CLOCK_SKEW <= when <= leaf.not_valid_after_utc:
        raise _bad(issuer, "the certificate is not valid now")
    try:
        leaf.verify_directly_issued_by(ca_chain[0])
    except (ValueError, TypeError, InvalidSignature):
        raise _bad(
            issuer, f"the certificate is not signed by the configured CA {ca_chain[0].subject.rfc4514_string()!r}"
        ) from None
    return IssuedChain(leaf, ca_chain[:-1], ca_chain[-1], issuer)
