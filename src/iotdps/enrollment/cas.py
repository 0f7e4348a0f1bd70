"""CA certificates uploaded to the service: trust anchors once their possession is proven.

A group names one by `caReferences`; the X.509 mechanism looks them up by thumbprint; the TLS
trust store holds the verified ones. Proof of possession itself (codes, the verification
certificate) is `provisioning.ca_admin`'s, with the code rules in `pki.verification`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps.jsonfields import drop_none
from iotdps.secret import Secret
from iotdps.timestamps import format_time

__all__ = ["CaCertificate"]


@dataclass(frozen=True, slots=True)
class CaCertificate:
    """A CA certificate uploaded to the service; a trust anchor only once verified.

    Proof of possession: `verification_code` is random, single use and expires at
    `verification_code_expires`; a verification certificate whose CN equals it, signed by
    this CA's key, sets `is_verified`.
    """

    name: str
    certificate: str
    info: Mapping[str, Any]
    is_verified: bool = False
    verification_code: Secret[str] | None = None
    verification_code_expires: datetime | None = None
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None
    # The CA's latest CRL (PEM), checked against this certificate on upload
    # (provisioning.revocations), and what operators see of it: number, thisUpdate,
    # nextUpdate, revokedCount. The service enforces it; it never signs one.
    crl: str | None = None
    crl_info: Mapping[str, Any] | None = None

    @property
    def sha256_thumbprint(self) -> str:
        return str(self.info.get("sha256Thumbprint", "")).upper()

    def to_json(self) -> dict[str, Any]:
        """The ARM-style certificate description (azure-wire-protocol.md section 5)."""
        return {
            "name": self.name,
            "etag": self.etag,
            "properties": drop_none(
                {
                    "subject": self.info.get("subjectName"),
                    # The issuer lets a client draw the hierarchy (root -> factory -> line).
                    "issuer": self.info.get("issuerName"),
                    "notBefore": self.info.get("notBeforeUtc"),
                    "expiry": self.info.get("notAfterUtc"),
                    "thumbprint": self.info.get("sha1Thumbprint"),
                    "sha256Thumbprint": self.info.get("sha256Thumbprint"),
                    "isVerified": self.is_verified,
                    "created": format_time(self.created) if self.created else None,
                    "updated": format_time(self.updated) if self.updated else None,
                    "certificate": self.certificate,
                    "crl": dict(self.crl_info) if self.crl_info is not None else None,
                }
            ),
        }
