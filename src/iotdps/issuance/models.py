"""Issuing CA objects and issued-certificate records.

An issuing CA object is what an enrollment's `clientCertificateIssuancePolicy` names
(`certificateAuthorityName`). Three kinds today, one seam (`pki.issuing.base.CertificateIssuer`):

* `local`: a CA made with the CA toolkit. The object holds the CA's certificate chain (CA
  first, ending at the root) and its private key exactly as the toolkit stored it (PKCS#8,
  encrypted with the CA's passphrase); the passphrase itself is sealed (`sealing`). So every
  node of a fleet that shares the database and the sealing key can issue.
* `cfssl`: a CFSSL server's authsign endpoint: URL, signing profile, auth key (sealed), the
  chain above the leaves it returns, optional trust anchors for its TLS, a timeout.
* `pkcs11`: a CA whose key is in a PKCS#11 token. The object holds the CA's chain and the
  RFC 7512 URI of the key, nothing secret: the token's module and PIN are the service's
  (IOTDPS_PKCS11_*, read when it logs in), so the database never holds what signs.

Management documents never carry the secret or the key (`to_json`); the store's document does,
sealed (`to_doc`).

An `IssuedCertificate` records every certificate a device was given (serial, thumbprints,
registration and device id, issuing CA, validity, when, the certificate itself, and which way
the device asked: `dps` at registration, `hub` over the hub's credentials topic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from cryptography import x509

from iotdps.errors import InvalidInput
from iotdps.jsonfields import drop_none, stamps
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.encoding import certs_to_pem, load_certificates
from iotdps.timestamps import format_time, parse_time

__all__ = ["ISSUED_VIA", "ISSUER_KINDS", "IssuedCertificate", "IssuerKind", "IssuingCa", "certificates_from_pem_list"]

IssuerKind = Literal["local", "cfssl", "pkcs11"]
ISSUER_KINDS: tuple[IssuerKind, ...] = ("local", "cfssl", "pkcs11")
# How the device asked: a DPS registration with a CSR, or `$iothub/credentials/POST/
# issueCertificate` on its hub connection (records written before the hub way existed are "dps").
ISSUED_VIA: tuple[str, ...] = ("dps", "hub")
_MAX_CHAIN = 8


def certificates_from_pem_list(value: object, where: str) -> tuple[x509.Certificate, ...]:
    """A JSON list of PEM (or base64 DER) strings, one certificate each, or one PEM bundle string."""
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = list(value)
    else:
        raise InvalidInput(f"{where} must be a list of PEM certificates")
    certs: list[x509.Certificate] = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise InvalidInput(f"{where}[{i}] must be a PEM certificate")
        try:
            certs.extend(load_certificates(item))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}[{i}]: {exc.message}") from None
    if len(certs) > _MAX_CHAIN:
        raise InvalidInput(f"{where} holds {len(certs)} certificates; at most {_MAX_CHAIN}")
    return tuple(certs)


def _pems(certs: Sequence[x509.Certificate]) -> list[str]:
    return [certs_to_pem([c]).decode("ascii") for c in certs]


@dataclass(frozen=True)
class IssuingCa:
    """One issuing CA object (see the module docstring)."""

    name: str
    kind: IssuerKind
    ca_chain: tuple[x509.Certificate, ...]
    sealed_secret: str  # local: the key's passphrase; cfssl: the hex auth key (sealing.SealingKey); pkcs11: ""
    key_pem: str | None = None  # local only: the encrypted PKCS#8 key, as the CA toolkit wrote it
    url: str | None = None  # cfssl only
    profile: str | None = None  # cfssl only
    tls_ca: tuple[x509.Certificate, ...] = field(default=())  # cfssl only; empty: the system's anchors
    timeout_seconds: float = 10.0
    pkcs11_uri: str | None = None  # pkcs11 only: the key's RFC 7512 URI (no module, no PIN)
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    def __post_init__(self) -> None:
        check_ca_name(self.name)
        if self.kind not in ISSUER_KINDS:
            raise InvalidInput(f"issuing CA kind must be one of {', '.join(ISSUER_KINDS)}, not {self.kind!r}")
        if not self.ca_chain:
            raise InvalidInput("an issuing CA needs its CA certificate chain (caChain)")
        if self.kind == "local" and not self.key_pem:
            raise InvalidInput("a local issuing CA needs the CA's encrypted key")
        if self.kind == "cfssl" and (not self.url or not self.profile):
            raise InvalidInput("a cfssl issuing CA needs url and profile")
        if self.kind == "pkcs11" and (not self.pkcs11_uri or self.key_pem or self.sealed_secret):
            raise InvalidInput("a pkcs11 issuing CA holds its key's PKCS#11 URI and no key or secret")

    def to_json(self) -> dict[str, Any]:
        """The management API's document: no key, no secret (only that one is set)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "caChain": _pems(self.ca_chain),
        }
        if self.kind == "cfssl":
            doc.update(
                {
                    "url": self.url,
                    "profile": self.profile,
                    "tlsCa": _pems(self.tls_ca),
                    "timeoutSeconds": self.timeout_seconds,
                    "authKey": "(set, write-only)",
                }
            )
        elif self.kind == "pkcs11":
            doc["pkcs11Uri"] = self.pkcs11_uri  # names the key; the module and PIN are the service's
        else:
            doc["passphrase"] = "(set, write-only)"  # noqa: S105 - a marker, not a secret
        doc.update(stamps(self.etag, self.created, self.updated))
        return doc

    def to_doc(self) -> dict[str, Any]:
        """The store's document: everything, the secret sealed."""
        return drop_none(
            {
                "name": self.name,
                "kind": self.kind,
                "caChain": _pems(self.ca_chain),
                "sealedSecret": self.sealed_secret,
                "keyPem": self.key_pem,
                "url": self.url,
                "profile": self.profile,
                "tlsCa": _pems(self.tls_ca),
                "timeoutSeconds": self.timeout_seconds,
                "pkcs11Uri": self.pkcs11_uri,
            }
        )

    @classmethod
    def from_doc(
        cls, doc: Mapping[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
    ) -> IssuingCa:
        return cls(
            name=str(doc["name"]),
            kind=cast(IssuerKind, doc["kind"]),
            ca_chain=certificates_from_pem_list(doc["caChain"], "caChain"),
            sealed_secret=str(doc.get("sealedSecret", "")),
            key_pem=doc.get("keyPem"),
            url=doc.get("url"),
            profile=doc.get("profile"),
            tls_ca=certificates_from_pem_list(doc.get("tlsCa", []), "tlsCa"),
            timeout_seconds=float(doc.get("timeoutSeconds", 10.0)),
            pkcs11_uri=doc.get("pkcs11Uri"),
            etag=etag,
            created=created,
            updated=updated,
        )


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate issued to a device, at registration or over its hub connection."""

    sha256_thumbprint: str
    sha1_thumbprint: str
    serial_number: str
    registration_id: str
    device_id: str | None
    issuer_name: str
    issuer_kind: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    enrollment: str | None  # "group:<id>" or "individual:<registration id>"
    pem: str
    issued_via: str = "dps"  # ISSUED_VIA

    def to_json(self, *, with_pem: bool = True) -> dict[str, Any]:
        doc = {
            "sha256Thumbprint": self.sha256_thumbprint,
            "sha1Thumbprint": self.sha1_thumbprint,
            "serialNumber": self.serial_number,
            "registrationId": self.registration_id,
            "deviceId": self.device_id,
            "certificateAuthorityName": self.issuer_name,
            "certificateAuthorityKind": self.issuer_kind,
            "notBeforeUtc": format_time(self.not_before),
            "notAfterUtc": format_time(self.not_after),
            "issuedDateTimeUtc": format_time(self.issued_at),
            "enrollment": self.enrollment,
            "issuedVia": self.issued_via,
        }
        if with_pem:
            doc["certificate"] = self.pem
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> IssuedCertificate:
        return cls(
            sha256_thumbprint=str(doc["sha256Thumbprint"]),
            sha1_thumbprint=str(doc["sha1Thumbprint"]),
            serial_number=str(doc["serialNumber"]),
            registration_id=str(doc["registrationId"]),
            device_id=doc.get("deviceId"),
            issuer_name=str(doc["certificateAuthorityName"]),
            issuer_kind=str(doc["certificateAuthorityKind"]),
            not_before=parse_time(str(doc["notBeforeUtc"])),
            not_after=parse_time(str(doc["notAfterUtc"])),
            issued_at=parse_time(str(doc["issuedDateTimeUtc"])),
            enrollment=doc.get("enrollment"),
            pem=str(doc.get("certificate", "")),
            issued_via=str(doc.get("issuedVia", "dps")),
        )
