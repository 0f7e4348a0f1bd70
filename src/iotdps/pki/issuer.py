"""Validity windows and issuers: the two inputs every certificate profile needs.

An `Issuer` pairs a CA certificate (and the certificates above it, up to its root) with a
signing key. The key is a separate record: a decrypted key file (a cryptography private key)
or any `Signer` (external_signing: a PKCS#11 token's key, which never leaves the token), and
the issuer only borrows it. Both types check themselves at construction so that a mistake
surfaces where it is made, not at signing time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotdps.errors import InvalidInput, PkiError
from iotdps.pki.certs import is_self_issued
from iotdps.pki.external_signing import Signer, SoftwareSigner
from iotdps.pki.keys import PrivateKey, public_keys_match

__all__ = ["CLOCK_SKEW", "Issuer", "Validity", "signature_hash"]

# Certificates start a few minutes in the past: a device or a server whose clock runs slightly
# behind would otherwise reject a certificate minted seconds ago as "not yet valid".
CLOCK_SKEW = dt.timedelta(minutes=5)


def _utc(when: dt.datetime, what: str) -> dt.datetime:
    if not isinstance(when, dt.datetime):
        raise TypeError(f"{what} must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise TypeError(f"{what} must be timezone-aware")
    return when.astimezone(dt.UTC)


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window; an empty or inverted window is refused at construction."""

    not_before: dt.datetime
    not_after: dt.datetime

    def __post_init__(self) -> None:
        nb = _utc(self.not_before, "not_before")
        na = _utc(self.not_after, "not_after")
        if na <= nb:
            raise InvalidInput("the validity window is empty: not_after must be later than not_before")
        if nb.year < 1950 or na.year > 9999:
            raise InvalidInput("validity dates must lie between 1950 and 9999")
        object.__setattr__(self, "not_before", nb)
        object.__setattr__(self, "not_after", na)

    @classmethod
    def days(cls, days: int, *, now: dt.datetime | None = None) -> Validity:
        """From a little before `now` (see CLOCK_SKEW) for `days` days."""
        if isinstance(days, bool) or not isinstance(days, int):
            raise TypeError("days must be an int")
        if days < 1:
            raise InvalidInput(f"validity must be at least 1 day, not {days}")
        start = _utc(now, "now") if now is not None else dt.datetime.now(dt.UTC)
        start = start.replace(microsecond=0)
        return cls(start - CLOCK_SKEW, start + dt.timedelta(days=days))

    def within(self, issuer: x509.Certificate, *, clamp: bool = False) -> Validity:
        """This window limited to the issuer's; a child must not outlive its CA.

        With `clamp` the end is pulled in to the issuer's end; without, overhanging raises.
        """
        na = issuer.not_valid_after_utc
        if self.not_after <= na:
            return self
        if not clamp:
            raise InvalidInput(
                f"the certificate would be valid until {self.not_after:%Y-%m-%d}, after its issuer "
                f"expires ({na:%Y-%m-%d}); choose fewer days"
            )
        return Validity(self.not_before, na)


def signature_hash(key: PrivateKey | Signer) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 (matching the curve's strength), SHA-256 otherwise."""
    if isinstance(key, Signer):
        return key.algorithm.hash()
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


@dataclass(frozen=True, repr=False)
class Issuer:
    """A CA that can sign: its certificate, its signing key, and its parents up to the root.

    `parents` lists the issuer's issuer first and ends with the root (empty for a root CA).
    """

    certificate: x509.Certificate
    # A private key in memory, or a Signer whose key lives elsewhere (a token).
    key: PrivateKey | Signer = field(repr=False)
    parents: tuple[x509.Certificate, ...] = ()
    name: str | None = None
    # Where this CA's CRL is published (pki.revocation): certificates it signs carry it as
    # their CRL distribution point. None: no CDP extension.
    crl_url: str | None = None
    _aki: x509.AuthorityKeyIdentifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, x509.Certificate):
            raise TypeError("certificate must be an x509.Certificate")
        if not isinstance(self.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | Signer):
            raise TypeError("key must be an EC or RSA private key, or a Signer")
        object.__setattr__(self, "parents", tuple(self.parents))
        label = self.label
        bc = _basic_constraints(self.certificate)
        if bc is None or not bc.ca:
            raise PkiError(f"{label} is not a CA certificate (basicConstraints CA:TRUE is missing)")
        try:
            ku = self.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                raise PkiError(f"{label} may not sign certificates (keyUsage lacks keyCertSign)")
        except x509.ExtensionNotFound:
            pass
        if not public_keys_match(self.key.public_key(), self.certificate.public_key()):
            raise PkiError(f"the key of {label} does not match its certificate")
        # Prefer the issuer's own SKI so AKI matches it byte for byte, whatever method made it.
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        object.__setattr__(self, "_aki", aki)
        if self.crl_url is not None and not self.crl_url.startswith(("http://", "https://")):
            raise InvalidInput(f"the CRL URL of {label} must be an http:// or https:// URL, not {self.crl_url!r}")

    @property
    def crl_distribution_points(self) -> x509.CRLDistributionPoints | None:
        """The CDP extension certificates signed by this CA carry, or None when not configured."""
        if self.crl_url is None:
            return None
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(self.crl_url)], None, None, None)
        return x509.CRLDistributionPoints([point])

    def __repr__(self) -> str:
        return f"Issuer(name={self.name!r}, subject={self.certificate.subject.rfc4514_string()!r})"

    @property
    def private_key(self) -> PrivateKey | None:
        """The key when iotdps holds it in memory (a key file); None when a Signer holds it."""
        return self.key if isinstance(self.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None

    @property
    def signer(self) -> Signer:
        """The key as a Signer, wherever it lives."""
        key = self.key
        if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            return SoftwareSigner(key)
        return key

    @property
    def label(self) -> str:
        return f"CA {self.name!r}" if self.name else f"CA {self.certificate.subject.rfc4514_string()!r}"

    @property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        return self._aki

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The issuer's certificate followed by its parents, ending with the root."""
        return (self.certificate, *self.parents)

    @property
    def bundle(self) -> tuple[x509.Certificate, ...]:
        """What a leaf ships after itself: the issuer and its intermediates, never the root.

        A device presents leaf + intermediates; the root is the trust anchor the server already
        holds, so sending it only wastes handshake bytes.
        """
        return tuple(c for c in self.chain if not is_self_issued(c))

    def child_ca_path_length(self, requested: int | None = None) -> int | None:
        """The path length a new CA under this issuer gets, or PkiError if none is allowed.

        A CA at distance i above the new CA (the issuer is at 0) sees i+1 intermediate CAs below
        itself once the new CA exists; its pathLenConstraint must allow that. The new CA may not
        claim more depth than its ancestors leave, and by default gets exactly what they leave.
        """
        budget: int | None = None
        for i, cert in enumerate(self.chain):
            bc = _basic_constraints(cert)
            if bc is None or bc.path_length is None:
                continue
            left = bc.path_length - (i + 1)
            if left < 0:
                who = "it" if i == 0 else f"its ancestor {cert.subject.rfc4514_string()!r}"
                raise PkiError(f"{self.label} cannot sign another CA: {who} has path length {bc.path_length}")
            budget = left if budget is None else min(budget, left)
        if requested is None:
            return budget
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise InvalidInput("path length must be a non-negative integer")
        if budget is not None and requested > budget:
            raise PkiError(f"path length {requested} is more than {self.label} allows below it ({budget})")
        return requested
