"""A registration record as operators read it: the record plus what issuance gave the device.

`RegistrationRecord.to_json` is the DeviceRegistrationState document, which is also the
`registrationState` of the device's own answers, so nothing operator-only may go into it. The
service API's registration routes and `iotdps registration show|list` answer this view instead:
the same document with iotdps's issuance fields (issue 18) added when there are some:

    "trustBundleId": "fleet-roots", "trustBundleVersion": 2,     # the bundle the device received
    "issuedCertificate": {                                        # the certificate last issued to it
        "sha256Thumbprint": "...", "serialNumber": "...",
        "notAfterUtc": "2027-01-06T15:42:53Z", "certificateAuthorityName": "factory-ca"
    }

The record keeps only the certificate's SHA-256 thumbprint; the rest comes from the issued
certificate records (`uow.issued_certificates`), read once per record that has one.

Revocation (issue 20): a device whose attestation certificate, or the certificate issued to it,
is revoked or chains through a revoked CA shows

    "revocation": {"revoked": true, "reason": "keyCompromise", "revokedAt": "2026-12-07T18:00:00Z",
                   "by": "leaf" | "ca:<uploaded CA name, or the CA's SHA-256 thumbprint>",
                   "certificate": "attestation" | "issued"}

It is worked out when the record is read, from the path the device was admitted under (kept on
the record, `RegistrationRecord.x509_path`), the issued certificate's record, and the CRLs the
service holds now (`attestation.x509.revocations_of`, the set the handshake and the hub
enforce). Nothing about revocation is written on the record: a flag written at revoke time
would have to be rewritten on every record under a CA in the CRL upload's transaction, on
every store, and again when a CRL or CA is replaced or deleted, and any miss (a record written
a moment later by a registration in flight, a CA deleted) would leave it wrong for good. Read
this way it cannot go stale: it says what is enforced at the moment it is read, and a device
is refused at its next handshake for exactly the reason its record shows. Records written
before the path was kept show a revocation of their issued certificate only, until the
device's next registration.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography import x509

from iotdps.attestation.x509 import revocations_of
from iotdps.errors import InvalidInput
from iotdps.issuance.models import IssuedCertificate
from iotdps.jsonfields import drop_none
from iotdps.pki.encoding import load_certificates
from iotdps.pki.revocation import RevocationHit, Revocations, walk_up
from iotdps.ports import UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.timestamps import format_time, parse_time

__all__ = [
    "IssuedSummary",
    "RegistrationView",
    "RevocationState",
    "RevocationSummary",
    "registration_view",
    "registration_views",
    "revocation_state",
]


@dataclass(frozen=True, slots=True)
class IssuedSummary:
    """What a registration shows of the certificate last issued to its device. Only the
    thumbprint is certain: the issued certificate record may be gone (pruned, or a store
    restored from before it)."""

    sha256_thumbprint: str
    serial_number: str | None = None
    not_after: datetime | None = None
    issuer_name: str | None = None

    @classmethod
    def of(cls, issued: IssuedCertificate) -> IssuedSummary:
        return cls(issued.sha256_thumbprint, issued.serial_number, issued.not_after, issued.issuer_name)

    def to_json(self) -> dict[str, Any]:
        return drop_none(
            {
                "sha256Thumbprint": self.sha256_thumbprint,
                "serialNumber": self.serial_number,
                "notAfterUtc": format_time(self.not_after) if self.not_after is not None else None,
                "certificateAuthorityName": self.issuer_name,
            }
        )

    @classmethod
    def from_json(cls, doc: object) -> IssuedSummary | None:
        """The summary in a service API answer (None when there is none or it is not an object)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("sha256Thumbprint"), str):
            return None
        after = doc.get("notAfterUtc")
        return cls(
            str(doc["sha256Thumbprint"]),
            str(doc["serialNumber"]) if doc.get("serialNumber") is not None else None,
            parse_time(after) if isinstance(after, str) else None,
            str(doc["certificateAuthorityName"]) if doc.get("certificateAuthorityName") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class RevocationSummary:
    """Why a registration's device is revoked now (see the module docstring)."""

    reason: str
    revoked_at: datetime | None
    by: str  # "leaf" or "ca:<name or SHA-256 thumbprint>"
    certificate: Literal["attestation", "issued"]

    def to_json(self) -> dict[str, Any]:
        return drop_none(
            {
                "revoked": True,
                "reason": self.reason,
                "revokedAt": format_time(self.revoked_at) if self.revoked_at is not None else None,
                "by": self.by,
                "certificate": self.certificate,
            }
        )

    @classmethod
    def from_json(cls, doc: object) -> RevocationSummary | None:
        if not isinstance(doc, Mapping) or doc.get("revoked") is not True:
            return None
        at = doc.get("revokedAt")
        which: Literal["attestation", "issued"] = "issued" if doc.get("certificate") == "issued" else "attestation"
        return cls(
            str(doc.get("reason") or "unspecified"),
            parse_time(at) if isinstance(at, str) else None,
            str(doc.get("by") or ""),
            which,
        )


@dataclass(frozen=True, slots=True)
class RegistrationView:
    record: RegistrationRecord
    issued: IssuedSummary | None = None
    revocation: RevocationSummary | None = None

    def to_json(self) -> dict[str, Any]:
        doc = self.record.to_json()
        if self.record.trust_bundle_id is not None:
            doc["trustBundleId"] = self.record.trust_bundle_id
            doc["trustBundleVersion"] = self.record.trust_bundle_version
        if self.issued is not None:
            doc["issuedCertificate"] = self.issued.to_json()
        if self.revocation is not None:
            doc["revocation"] = self.revocation.to_json()
        return doc


@dataclass(frozen=True, slots=True)
class RevocationState:
    """The revocations enforced now and the uploaded CAs (names by thumbprint, certificates to
    walk an issued certificate up), read once for a page of records."""

    revoked: Revocations
    ca_names: Mapping[str, str]
    ca_certificates: tuple[x509.Certificate, ...]

    def summary(
        self, path: Sequence[x509.Certificate], which: Literal["attestation", "issued"]
    ) -> RevocationSummary | None:
        hit: RevocationHit | None = self.revoked.first_hit(path)
        if hit is None:
            return None
        if hit.ca_sha256 is None:
            by = "leaf"
        else:
            by = f"ca:{self.ca_names.get(hit.ca_sha256.upper(), hit.ca_sha256.upper())}"
        return RevocationSummary(hit.reason, hit.revoked_at, by, which)


async def revocation_state(uow: UnitOfWork) -> RevocationState:
    """From the uploaded CAs and their CRLs only, so kept in the read cache until a CA (or its
    CRL) changes: listing pages of records does not rebuild it each time."""

    async def build() -> RevocationState:
        cas = list(await uow.cas.list())
        certs = tuple(c for ca in cas if (c := _first_certificate(ca.certificate)) is not None)
        return RevocationState(revocations_of(cas), {ca.sha256_thumbprint.upper(): ca.name for ca in cas}, certs)

    return await uow.cached_config_answer(("registration revocations",), build)


@functools.lru_cache(maxsize=4096)
def _der_certificate(b64: str) -> x509.Certificate | None:
    """A certificate of a kept path (the CAs above a line's leaves repeat on every record)."""
    try:
        return x509.load_der_x509_certificate(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error):
        return None


def _first_certificate(pem: str) -> x509.Certificate | None:
    try:
        found = load_certificates(pem)
    except InvalidInput:  # a damaged record shows nothing rather than failing the listing
        return None
    return found[0] if found else None


async def _issued_path(
    uow: UnitOfWork, stored: IssuedCertificate, state: RevocationState
) -> list[x509.Certificate] | None:
    cert = _first_certificate(stored.pem)
    if cert is None:
        return None
    issuing = await uow.issuing_cas.get(stored.issuer_name)
    pool = [*(issuing.ca_chain if issuing is not None else ()), *state.ca_certificates]
    return walk_up(cert, pool)


async def registration_view(
    uow: UnitOfWork, record: RegistrationRecord, state: RevocationState | None = None
) -> RegistrationView:
    """The record as operators read it; `state`: the revocations read for a page of records."""
    if state is None:
        state = await revocation_state(uow)
    revocation = None
    if record.x509_path and len(state.revoked):
        kept = [_der_certificate(c) for c in record.x509_path]
        if all(c is not None for c in kept):
            revocation = state.summary([c for c in kept if c is not None], "attestation")
    if record.issued_certificate is None:
        return RegistrationView(record, None, revocation)
    stored = await uow.issued_certificates.get(record.issued_certificate)
    summary = IssuedSummary.of(stored) if stored is not None else IssuedSummary(record.issued_certificate)
    if revocation is None and stored is not None and len(state.revoked):
        path = await _issued_path(uow, stored, state)
        revocation = state.summary(path, "issued") if path else None
    return RegistrationView(record, summary, revocation)


async def registration_views(uow: UnitOfWork, records: Iterable[RegistrationRecord]) -> list[RegistrationView]:
    """Views of many records, the revocations read once."""
    state = await revocation_state(uow)
    return [await registration_view(uow, r, state) for r in records]
