"""Trust bundles: named, versioned sets of CA certificates that devices put in their root store.

Seed 002: a device must hold a root store for every known issuer and have a way to update it,
because service certificates rotate, even at the root. A trust bundle is that update: DPS
returns it in the registration state (api-version 2021-11-01-preview, azure-wire-protocol.md
10.2, REST spec `TrustBundle`):

    "trustBundle": {
        "id": "fleet-roots", "etag": "...",
        "createdDateTime": "...", "lastModifiedDateTime": "...",
        "certificates": [{"certificate": PEM, "metadata": {subjectName, sha1Thumbprint,
            sha256Thumbprint, issuerName, notBeforeUtc, notAfterUtc, serialNumber, version}}]
    }

The metadata is Azure's X509CertificateInfo (`encoding.certificate_info`, the same object the
enrollment API shows for attestation certificates): upper-case hex thumbprints and serial,
`CN=..., O=...` names, second-precision UTC times. The spec's examples are not consistent on
those (lower-case SHA-1 next to upper-case SHA-256, `CN = X`, milliseconds), so we keep the
one form the rest of our API uses. PEM is written with CRLF line ends, as the spec's
description of the field shows.

The management API's document is the same object plus `version` (see `to_json`); a create or
update body needs only `certificates: [{certificate}]` (metadata is read-only and ignored on
input; `certificates_from_json`).

Each change makes a new version and a new etag; `version` is what a registration record keeps
to know which bundle a device last received (the server-CA rotation status lists devices whose
last bundle lacks the new CA). Validation: at least one and at most MAX_BUNDLE_CERTIFICATES
certificates (an empty bundle would tell devices to trust nothing), CA certificates only, no
duplicates.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import InvalidInput
from iotdps.pki.encoding import certificate_info, load_certificates, sha256_thumbprint

__all__ = [
    "MAX_BUNDLE_CERTIFICATES",
    "TrustBundle",
    "certificates_from_json",
    "check_bundle_id",
    "wire_pem",
]

# Enough for several roots and their intermediates across a rotation or two; a bundle ships
# in every registration answer, so it stays small (64 P-256 CAs are ~40 KB of JSON).
MAX_BUNDLE_CERTIFICATES = 64

# Azure's rule for the id: up to 128 letters, digits and : . _ -, no special character first or
# last (REST spec, TrustBundle.id). Ids compare case-insensitively there; stores should too.
_BUNDLE_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,126}[A-Za-z0-9])?\Z")


def check_bundle_id(value: object) -> str:
    if not isinstance(value, str) or not _BUNDLE_ID.match(value):
        raise InvalidInput(
            f"invalid trust bundle id {value!r}: use 1-128 letters, digits, ':', '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def wire_pem(cert: x509.Certificate) -> str:
    """A certificate as the DPS certificate-issuance previews carry PEM: CRLF line ends."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii").replace("\n", "\r\n")


def _format_time(value: datetime) -> str:
    # The DPS timestamp form (7 fractional digits, Z), as iotdps.timestamps.format_time writes
    # it; pki sits below enrollment and cannot import it.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a time string")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # Python takes at most 6 fractional digits; DPS writes 7
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{where}: {value!r} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _check_ca(cert: x509.Certificate) -> None:
    who = cert.subject.rfc4514_string() or "(empty subject)"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise InvalidInput(f"trust bundles hold CA certificates only; {who!r} is not a CA (basicConstraints)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise InvalidInput(f"trust bundles hold CA certificates only; {who!r} may not sign certificates (keyUsage)")


def _check_certificates(certificates: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    certs = tuple(certificates)
    if not certs:
        raise InvalidInput("a trust bundle needs at least one certificate (an empty one would make devices trust none)")
    if len(certs) > MAX_BUNDLE_CERTIFICATES:
        raise InvalidInput(f"a trust bundle holds at most {MAX_BUNDLE_CERTIFICATES} certificates, not {len(certs)}")
    seen: dict[str, int] = {}
    for i, cert in enumerate(certs):
        if not isinstance(cert, x509.Certificate):
            raise TypeError("a trust bundle holds x509.Certificate objects")
        _check_ca(cert)
        thumbprint = sha256_thumbprint(cert)
        if thumbprint in seen:
            raise InvalidInput(
                f"certificate {i + 1} ({cert.subject.rfc4514_string()!r}) is a duplicate of "
                f"certificate {seen[thumbprint] + 1}"
            )
        seen[thumbprint] = i
    return certs


def certificates_from_json(doc: object, where: str = "trustBundle") -> tuple[x509.Certificate, ...]:
    """The certificates of a create/update body `{"certificates": [{"certificate": PEM}]}`.

    Each `certificate` may be PEM or base64 DER (one certificate each). `metadata` is ignored:
    it is computed from the certificate, never trusted from a client."""
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{where} must be an object")
    items = doc.get("certificates")
    if not isinstance(items, list):
        raise InvalidInput(f"{where}.certificates must be a list")
    if len(items) > MAX_BUNDLE_CERTIFICATES:
        raise InvalidInput(f"a trust bundle holds at most {MAX_BUNDLE_CERTIFICATES} certificates, not {len(items)}")
    out: list[x509.Certificate] = []
    for i, item in enumerate(items):
        text = item.get("certificate") if isinstance(item, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"{where}.certificates[{i}].certificate must be a PEM or base64 DER string")
        try:
            certs = load_certificates(text)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}.certificates[{i}]: {exc.message}") from None
        if len(certs) != 1:
            raise InvalidInput(f"{where}.certificates[{i}] holds {len(certs)} certificates; give one per entry")
        out.append(certs[0])
    return _check_certificates(out)


def _new_etag() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class TrustBundle:
    """One version of a named trust bundle. Immutable: `revised` makes the next version."""

    bundle_id: str
    certificates: tuple[x509.Certificate, ...]
    version: int
    etag: str
    created: datetime
    modified: datetime

    def __post_init__(self) -> None:
        check_bundle_id(self.bundle_id)
        object.__setattr__(self, "certificates", _check_certificates(self.certificates))
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidInput("a trust bundle version is a positive integer")
        if not isinstance(self.etag, str) or not self.etag:
            raise InvalidInput("a trust bundle needs an etag")
        object.__setattr__(self, "created", _aware(self.created, "created"))
        object.__setattr__(self, "modified", _aware(self.modified, "modified"))
        if self.modified < self.created:
            raise InvalidInput("a trust bundle cannot be modified before it was created")

    @classmethod
    def new(
        cls, bundle_id: str, certificates: Sequence[x509.Certificate], *, now: datetime | None = None
    ) -> TrustBundle:
        when = now or datetime.now(UTC)
        return cls(bundle_id, tuple(certificates), 1, _new_etag(), when, when)

    def revised(self, certificates: Sequence[x509.Certificate], *, now: datetime | None = None) -> TrustBundle:
        """The next version with `certificates`: new etag, same id and creation time."""
        when = max(now or datetime.now(UTC), self.modified)
        return replace(
            self, certificates=tuple(certificates), version=self.version + 1, etag=_new_etag(), modified=when
        )

    @property
    def sha256_thumbprints(self) -> frozenset[str]:
        return frozenset(sha256_thumbprint(c) for c in self.certificates)

    def contains(self, cert: x509.Certificate) -> bool:
        return sha256_thumbprint(cert) in self.sha256_thumbprints

    def to_wire(self) -> dict[str, Any]:
        """`registrationState.trustBundle` (api-version 2021-11-01-preview)."""
        return {
            "id": self.bundle_id,
            "etag": self.etag,
            "createdDateTime": _format_time(self.created),
            "lastModifiedDateTime": _format_time(self.modified),
            "certificates": [
                {"certificate": wire_pem(c), "metadata": dict(certificate_info(c))} for c in self.certificates
            ],
        }

    def to_json(self) -> dict[str, Any]:
        """The management API's document: the wire object plus `version`."""
        return {**self.to_wire(), "version": self.version}

    @classmethod
    def from_json(cls, doc: object, where: str = "trustBundle") -> TrustBundle:
        """A stored or returned bundle document (every field present), checked as at creation."""
        if not isinstance(doc, Mapping):
            raise InvalidInput(f"{where} must be an object")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(f"{where}.version must be an integer")
        etag = doc.get("etag")
        if not isinstance(etag, str):
            raise InvalidInput(f"{where}.etag must be a string")
        return cls(
            check_bundle_id(doc.get("id")),
            certificates_from_json(doc, where),
            version,
            etag,
            _parse_time(doc.get("createdDateTime"), f"{where}.createdDateTime"),
            _parse_time(doc.get("lastModifiedDateTime"), f"{where}.lastModifiedDateTime"),
        )
