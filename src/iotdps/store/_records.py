"""How each record becomes a stored JSON document and back (shared by every store).

Both the SQL store and the in-memory fake keep a record as a JSON document plus a few key
and index columns, and rebuild it with these functions, so they cannot drift apart. The
stamp fields (etag, created, updated) live in columns, not in the document: `put` assigns
them and `*_from_doc` re-applies them.

Enrollment documents are the Azure DPS shapes with keys included (`to_json(include_keys=True)`):
the keys must survive, and `from_json` would silently generate new ones if they were missing.
Records without an Azure reader (registrations, devices, CAs) get a document of their own here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from iotdps.allocation.hubs import LinkedHub, served_by_from_json
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import AllocationPolicy, EnrollmentGroup, IndividualEnrollment
from iotdps.hub.devices import AuthType, DeviceAuth, DeviceIdentity, DeviceStatus, Twin
from iotdps.pki.verification import hash_code
from iotdps.provisioning.records import RegistrationRecord, RegistrationStatus, Substatus
from iotdps.provisioning.settings import ServiceSettings
from iotdps.secret import Secret
from iotdps.timestamps import parse_time

__all__ = [
    "STAMP_KEYS",
    "ca_from_doc",
    "ca_to_doc",
    "device_from_doc",
    "device_to_doc",
    "enrollment_from_doc",
    "enrollment_to_doc",
    "group_ca_references",
    "group_from_doc",
    "group_signing_thumbprints",
    "group_to_doc",
    "hub_from_doc",
    "hub_to_doc",
    "registration_from_doc",
    "registration_to_doc",
    "settings_from_doc",
    "settings_to_doc",
    "to_utc",
]

STAMP_KEYS = ("etag", "createdDateTimeUtc", "lastUpdatedDateTimeUtc")


def to_utc(value: datetime) -> datetime:
    """Timezone-aware UTC; a naive value (SQLite hands those back) is taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opt_time(value: object) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


def _unstamped(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in STAMP_KEYS}


# --------------------------------------------------------------------------- enrollments


# A TPM enrollment's challenge key sits beside the API document, never inside it: no API answer
# (not even the attestation mechanism with keys) may reveal it (enrollment.models.TpmAttestation).
TPM_CHALLENGE_KEY_FIELD = "tpmChallengeKey"


def enrollment_to_doc(enrollment: IndividualEnrollment) -> dict[str, Any]:
    doc = _unstamped(enrollment.to_json(include_keys=True))
    tpm = enrollment.attestation.tpm
    if tpm is not None:
        doc[TPM_CHALLENGE_KEY_FIELD] = tpm.challenge_key.reveal()
    return doc


def enrollment_from_doc(
    doc: dict[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> IndividualEnrollment:
    body = dict(doc)
    challenge_key = body.pop(TPM_CHALLENGE_KEY_FIELD, None)
    record = IndividualEnrollment.from_json(body)
    tpm = record.attestation.tpm
    if tpm is not None and isinstance(challenge_key, str):
        attestation = replace(record.attestation, tpm=replace(tpm, challenge_key=Secret(challenge_key)))
        record = replace(record, attestation=attestation)
    return replace(record, etag=etag, created=created, updated=updated)


def group_to_doc(group: EnrollmentGroup) -> dict[str, Any]:
    return _unstamped(group.to_json(include_keys=True))


def group_from_doc(
    doc: dict[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> EnrollmentGroup:
    record = EnrollmentGroup.from_json(doc)
    return replace(record, etag=etag, created=created, updated=updated)


def group_signing_thumbprints(group: EnrollmentGroup) -> set[str]:
    """Upper-case SHA-256 thumbprints of the group's signing certificates (index entries)."""
    x509 = group.attestation.x509
    if x509 is None:
        return set()
    return {slot.sha256_thumbprint for slot in x509.signing_certificates if slot and slot.sha256_thumbprint}


def group_ca_references(group: EnrollmentGroup) -> set[str]:
    x509 = group.attestation.x509
    if x509 is None:
        return set()
    return {ref for ref in x509.ca_references if ref}


# --------------------------------------------------------------------------- CA certificates


def ca_to_doc(ca: CaCertificate) -> dict[str, Any]:
    """The verification code is stored hashed (see iotdps.pki.verification)."""
    code = ca.verification_code.reveal() if ca.verification_code is not None else None
    expires = ca.verification_code_expires
    return {
        "name": ca.name,
        "certificate": ca.certificate,
        "info": dict(ca.info),
        "isVerified": ca.is_verified,
        "verificationCodeHash": hash_code(code) if code else None,
        "verificationCodeExpires": to_utc(expires).isoformat() if expires else None,
        # A field of the document, not a column: nothing queries by it, so no migration.
        "crl": ca.crl,
        "crlInfo": dict(ca.crl_info) if ca.crl_info is not None else None,
    }


def ca_from_doc(
    doc: dict[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> CaCertificate:
    code = doc.get("verificationCodeHash")
    return CaCertificate(
        name=str(doc["name"]),
        certificate=str(doc["certificate"]),
        info=dict(doc.get("info") or {}),
        is_verified=bool(doc.get("isVerified")),
        verification_code=Secret(str(code)) if code else None,
        verification_code_expires=_opt_time(doc.get("verificationCodeExpires")),
        etag=etag,
        created=created,
        updated=updated,
        crl=str(doc["crl"]) if doc.get("crl") else None,
        crl_info=dict(doc["crlInfo"]) if isinstance(doc.get("crlInfo"), dict) else None,
    )


# --------------------------------------------------------------------------- service config


def hub_to_doc(hub: LinkedHub) -> dict[str, Any]:
    return hub.to_json()


def hub_from_doc(doc: dict[str, Any]) -> LinkedHub:
    return LinkedHub(
        host_name=str(doc["name"]),
        allocation_weight=int(doc.get("allocationWeight", 1)),
        apply_allocation_policy=bool(doc.get("applyAllocationPolicy", True)),
        location=cast(str | None, doc.get("location")),
        served_until=_opt_time(doc.get("servedUntil")),
        implicit=doc.get("implicit") is True,
        served_by=served_by_from_json(doc.get("servedBy")),
    )


def settings_to_doc(settings: ServiceSettings) -> dict[str, Any]:
    return {"idScope": settings.id_scope, "allocationPolicy": settings.default_allocation_policy}


def settings_from_doc(doc: dict[str, Any]) -> ServiceSettings:
    return ServiceSettings(
        id_scope=str(doc["idScope"]),
        default_allocation_policy=cast(AllocationPolicy, doc.get("allocationPolicy", "hashed")),
    )


# --------------------------------------------------------------------------- registrations


def registration_to_doc(record: RegistrationRecord) -> dict[str, Any]:
    return {
        "registrationId": record.registration_id,
        "status": record.status,
        "operationId": record.operation_id,
        "substatus": record.substatus,
        "assignedHub": record.assigned_hub,
        "deviceId": record.device_id,
        "errorCode": record.error_code,
        "errorMessage": record.error_message,
        "payload": record.payload,
        "attestationType": record.attestation_type,
        "enrollmentGroupId": record.enrollment_group_id,
        "x509Thumbprint": record.x509_thumbprint,
        "x509Path": list(record.x509_path) or None,
        "tpmAuthenticationKey": record.tpm_authentication_key,
        "trustBundleId": record.trust_bundle_id,
        "trustBundleVersion": record.trust_bundle_version,
        "issuedCertificate": record.issued_certificate,
    }


def registration_from_doc(
    doc: dict[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> RegistrationRecord:
    return RegistrationRecord(
        registration_id=str(doc["registrationId"]),
        status=cast(RegistrationStatus, doc["status"]),
        operation_id=str(doc["operationId"]),
        substatus=cast(Substatus | None, doc.get("substatus")),
        assigned_hub=doc.get("assignedHub"),
        device_id=doc.get("deviceId"),
        error_code=doc.get("errorCode"),
        error_message=doc.get("errorMessage"),
        payload=doc.get("payload"),
        attestation_type=doc.get("attestationType"),
        enrollment_group_id=doc.get("enrollmentGroupId"),
        x509_thumbprint=doc.get("x509Thumbprint"),
        x509_path=tuple(str(c) for c in doc.get("x509Path") or ()),
        tpm_authentication_key=doc.get("tpmAuthenticationKey"),
        trust_bundle_id=doc.get("trustBundleId"),
        trust_bundle_version=doc.get("trustBundleVersion"),
        issued_certificate=doc.get("issuedCertificate"),
        etag=etag,
        created=created,
        updated=updated,
    )


# --------------------------------------------------------------------------- devices


def device_to_doc(device: DeviceIdentity) -> dict[str, Any]:
    auth = device.auth
    twin = device.twin
    return {
        "hub": device.hub,
        "deviceId": device.device_id,
        "auth": {
            "type": auth.type,
            "primaryKey": auth.primary_key.reveal() if auth.primary_key is not None else None,
            "secondaryKey": auth.secondary_key.reveal() if auth.secondary_key is not None else None,
            "primaryThumbprints": list(auth.primary_thumbprints),
            "secondaryThumbprints": list(auth.secondary_thumbprints),
            # A field of the document (issue 18), not a column: nothing queries by it.
            "issuedThumbprints": list(auth.issued_thumbprints),
        },
        "status": device.status,
        "iotEdge": device.iot_edge,
        "twin": {
            "tags": dict(twin.tags),
            "desired": dict(twin.desired),
            "reported": dict(twin.reported),
            "desiredVersion": twin.desired_version,
            "reportedVersion": twin.reported_version,
            "version": twin.version,
        },
        "registrationId": device.registration_id,
    }


def device_from_doc(
    doc: dict[str, Any], etag: str | None, created: datetime | None, updated: datetime | None
) -> DeviceIdentity:
    auth = doc["auth"]
    twin = doc.get("twin") or {}
    primary = auth.get("primaryKey")
    secondary = auth.get("secondaryKey")
    return DeviceIdentity(
        hub=str(doc["hub"]),
        device_id=str(doc["deviceId"]),
        auth=DeviceAuth(
            type=cast(AuthType, auth["type"]),
            primary_key=Secret(str(primary)) if primary is not None else None,
            secondary_key=Secret(str(secondary)) if secondary is not None else None,
            primary_thumbprints=tuple(auth.get("primaryThumbprints") or ()),
            secondary_thumbprints=tuple(auth.get("secondaryThumbprints") or ()),
            issued_thumbprints=tuple(auth.get("issuedThumbprints") or ()),
        ),
        status=cast(DeviceStatus, doc.get("status", "enabled")),
        iot_edge=bool(doc.get("iotEdge", False)),
        twin=Twin(
            tags=dict(twin.get("tags") or {}),
            desired=dict(twin.get("desired") or {}),
            reported=dict(twin.get("reported") or {}),
            desired_version=int(twin.get("desiredVersion", 1)),
            reported_version=int(twin.get("reportedVersion", 1)),
            version=int(twin.get("version", 1)),
        ),
        registration_id=doc.get("registrationId"),
        etag=etag,
        created=created,
        updated=updated,
    )
