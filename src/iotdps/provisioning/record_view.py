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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps.issuance.models import IssuedCertificate
from iotdps.jsonfields import drop_none
from iotdps.ports import UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.timestamps import format_time, parse_time

__all__ = ["IssuedSummary", "RegistrationView", "registration_view"]


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
class RegistrationView:
    record: RegistrationRecord
    issued: IssuedSummary | None = None

    def to_json(self) -> dict[str, Any]:
        doc = self.record.to_json()
        if self.record.trust_bundle_id is not None:
            doc["trustBundleId"] = self.record.trust_bundle_id
            doc["trustBundleVersion"] = self.record.trust_bundle_version
        if self.issued is not None:
            doc["issuedCertificate"] = self.issued.to_json()
        return doc


async def registration_view(uow: UnitOfWork, record: RegistrationRecord) -> RegistrationView:
    if record.issued_certificate is None:
        return RegistrationView(record)
    stored = await uow.issued_certificates.get(record.issued_certificate)
    summary = IssuedSummary.of(stored) if stored is not None else IssuedSummary(record.issued_certificate)
    return RegistrationView(record, summary)
