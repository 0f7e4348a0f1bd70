"""Records of the provisioning service, in the shapes of the Azure DPS service API.

Every record is an immutable dataclass with `to_json()` (the camelCase document the DPS
service API returns, azure-wire-protocol.md section 4) and `from_json()` (strict: wrong types
and bad values raise InvalidInput naming the field). The store keeps each record as that
document plus a few indexed key columns, so the API, the CLI and the store agree on one shape.

Secrets (symmetric keys) are held in `Secret` so that a record can be logged or printed
without leaking them; `to_json(include_keys=False)` leaves them out, as the service API's GET
does (keys only come back from `attestationmechanism`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

from iotdps.errors import InvalidInput
from iotdps.ids import check_registration_id
from iotdps.secret import Secret

__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_REPROVISION_POLICY",
    "AllocationPolicy",
    "Attestation",
    "CaCertificate",
    "CertificateSlot",
    "CustomAllocationDefinition",
    "EnrollmentGroup",
    "IndividualEnrollment",
    "InitialTwin",
    "LinkedHub",
    "ProvisioningStatus",
    "RegistrationRecord",
    "RegistrationStatus",
    "ReprovisionPolicy",
    "ServiceSettings",
    "Substatus",
    "SymmetricKeyAttestation",
    "TpmAttestation",
    "X509Attestation",
    "format_time",
    "generate_symmetric_key",
    "new_etag",
    "parse_time",
    "utcnow",
]

ProvisioningStatus = Literal["enabled", "disabled"]
AllocationPolicy = Literal["hashed", "geoLatency", "static", "custom"]
RegistrationStatus = Literal["unassigned", "assigning", "assigned", "failed", "disabled"]
Substatus = Literal["initialAssignment", "deviceDataMigrated", "deviceDataReset", "reprovisionedToInitialAssignment"]
AttestationType = Literal["x509", "symmetricKey", "tpm"]

ALLOCATION_POLICIES: tuple[str, ...] = ("hashed", "geoLatency", "static", "custom")
_PROVISIONING_STATUSES: tuple[str, ...] = ("enabled", "disabled")
# Symmetric keys supplied by a user: 16..64 bytes; generated ones are 64 bytes (DPS docs).
_KEY_MIN, _KEY_MAX, _KEY_GENERATED = 16, 64, 64


# --------------------------------------------------------------------------- helpers


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """ISO-8601 in UTC with 7 fractional digits and `Z`, as real DPS writes timestamps."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def parse_time(value: str) -> datetime:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits; DPS writes 7.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not an ISO-8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def new_etag() -> str:
    """An opaque entity tag; a fresh one is written with every change of a record."""
    return secrets.token_hex(8)


def generate_symmetric_key() -> Secret[str]:
    return Secret(base64.b64encode(secrets.token_bytes(_KEY_GENERATED)).decode("ascii"))


def _check_key(value: object, where: str) -> Secret[str]:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{where} is not valid base64") from exc
    if not _KEY_MIN <= len(raw) <= _KEY_MAX:
        raise InvalidInput(f"{where} must decode to {_KEY_MIN}..{_KEY_MAX} bytes, not {len(raw)}")
    return Secret(value)


def _obj(doc: object, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{where} must be a JSON object")
    return cast(Mapping[str, Any], doc)


def _opt_str(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{where}.{key} must be a string")
    return value


def _req_str(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = _opt_str(doc, key, where)
    if not value:
        raise InvalidInput(f"{where}.{key} is required")
    return value


def _opt_bool(doc: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = doc.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key} must be true or false")
    return value


def _opt_object(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = doc.get(key)
    if value is None:
        return None
    return dict(_obj(value, f"{where}.{key}"))


def _drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


# --------------------------------------------------------------------------- attestation


@dataclass(frozen=True, slots=True)
class CertificateSlot:
    """One certificate of an X.509 attestation: the PEM text and the service-filled info.

    `info` is the Azure X509CertificateInfo dict (subjectName, sha1Thumbprint, sha256Thumbprint,
    issuerName, notBeforeUtc, notAfterUtc, serialNumber, version), computed by the service from
    the certificate when the record is written; the thumbprints are upper-case hex.
    """

    certificate: str
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sha256_thumbprint(self) -> str:
        return str(self.info.get("sha256Thumbprint", "")).upper()

    def to_json(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "info": dict(self.info)}


@dataclass(frozen=True, slots=True)
class X509Attestation:
    client_certificates: tuple[CertificateSlot | None, CertificateSlot | None] = (None, None)
    signing_certificates: tuple[CertificateSlot | None, CertificateSlot | None] = (None, None)
    ca_references: tuple[str | None, str | None] = (None, None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, pair in (
            ("clientCertificates", self.client_certificates),
            ("signingCertificates", self.signing_certificates),
        ):
            if any(pair):
                out[key] = _drop_none(
                    {
                        "primary": pair[0].to_json() if pair[0] else None,
                        "secondary": pair[1].to_json() if pair[1] else None,
                    }
                )
        if any(self.ca_references):
            out["caReferences"] = _drop_none({"primary": self.ca_references[0], "secondary": self.ca_references[1]})
        return out

    @staticmethod
    def from_json(doc: object, where: str) -> X509Attestation:
        body = _obj(doc, where)

        def slots(key: str) -> tuple[CertificateSlot | None, CertificateSlot | None]:
            pair = _opt_object(body, key, where) or {}
            result: list[CertificateSlot | None] = []
            for which in ("primary", "secondary"):
                slot = pair.get(which)
                if slot is None:
                    result.append(None)
                    continue
                slot_doc = _obj(slot, f"{where}.{key}.{which}")
                cert = _req_str(slot_doc, "certificate", f"{where}.{key}.{which}")
                info = _opt_object(slot_doc, "info", f"{where}.{key}.{which}") or {}
                result.append(CertificateSlot(cert, info))
            return result[0], result[1]

        refs = _opt_object(body, "caReferences", where) or {}
        ca_refs = (
            _opt_str(refs, "primary", f"{where}.caReferences"),
            _opt_str(refs, "secondary", f"{where}.caReferences"),
        )
        return X509Attestation(slots("clientCertificates"), slots("signingCertificates"), ca_refs)


@dataclass(frozen=True, slots=True)
class SymmetricKeyAttestation:
    primary_key: Secret[str]
    secondary_key: Secret[str]

    @staticmethod
    def generate() -> SymmetricKeyAttestation:
        return SymmetricKeyAttestation(generate_symmetric_key(), generate_symmetric_key())

    def keys(self) -> tuple[str, str]:
        return self.primary_key.reveal(), self.secondary_key.reveal()

    def to_json(self, include_keys: bool) -> dict[str, Any]:
        if not include_keys:
            return {}
        return {"primaryKey": self.primary_key.reveal(), "secondaryKey": self.secondary_key.reveal()}

    @staticmethod
    def from_json(doc: object, where: str) -> SymmetricKeyAttestation:
        """Missing keys are generated, as DPS does when `symmetricKey` is empty."""
        body = _obj(doc, where) if doc is not None else {}
        primary = body.get("primaryKey")
        secondary = body.get("secondaryKey")
        return SymmetricKeyAttestation(
            _check_key(primary, f"{where}.primaryKey") if primary else generate_symmetric_key(),
            _check_key(secondary, f"{where}.secondaryKey") if secondary else generate_symmetric_key(),
        )


@dataclass(frozen=True, slots=True)
class TpmAttestation:
    endorsement_key: str
    storage_root_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"endorsementKey": self.endorsement_key, "storageRootKey": self.storage_root_key})

    @staticmethod
    def from_json(doc: object, where: str) -> TpmAttestation:
        body = _obj(doc, where)
        ek = _req_str(body, "endorsementKey", where)
        srk = _opt_str(body, "storageRootKey", where)
        for name, value in (("endorsementKey", ek), ("storageRootKey", srk)):
            if value is not None:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise InvalidInput(f"{where}.{name} is not valid base64") from exc
        return TpmAttestation(ek, srk)


@dataclass(frozen=True, slots=True)
class Attestation:
    type: AttestationType
    x509: X509Attestation | None = None
    symmetric_key: SymmetricKeyAttestation | None = None
    tpm: TpmAttestation | None = None

    def to_json(self, include_keys: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.x509 is not None:
            out["x509"] = self.x509.to_json()
        if self.symmetric_key is not None:
            out["symmetricKey"] = self.symmetric_key.to_json(include_keys)
        if self.tpm is not None:
            out["tpm"] = self.tpm.to_json()
        return out

    @staticmethod
    def from_json(doc: object, where: str, *, group: bool) -> Attestation:
        body = _obj(doc, where)
        kind = body.get("type")
        if kind == "x509":
            x509 = X509Attestation.from_json(body.get("x509"), f"{where}.x509")
            if group:
                if any(x509.client_certificates):
                    raise InvalidInput(
                        f"{where}.x509: an enrollment group takes signingCertificates or caReferences,"
                        " not clientCertificates"
                    )
                if not (any(x509.signing_certificates) or any(x509.ca_references)):
                    raise InvalidInput(f"{where}.x509 needs signingCertificates or caReferences")
            else:
                if any(x509.signing_certificates) or any(x509.ca_references):
                    raise InvalidInput(f"{where}.x509: an individual enrollment takes clientCertificates")
                if not x509.client_certificates[0]:
                    raise InvalidInput(f"{where}.x509.clientCertificates.primary is required")
            return Attestation("x509", x509=x509)
        if kind == "symmetricKey":
            return Attestation(
                "symmetricKey",
                symmetric_key=SymmetricKeyAttestation.from_json(body.get("symmetricKey"), f"{where}.symmetricKey"),
            )
        if kind == "tpm":
            if group:
                raise InvalidInput(f"{where}.type tpm is not valid for an enrollment group")
            return Attestation("tpm", tpm=TpmAttestation.from_json(body.get("tpm"), f"{where}.tpm"))
        raise InvalidInput(f"{where}.type must be one of x509, symmetricKey, tpm (got {kind!r})")


# --------------------------------------------------------------------------- shared fields


@dataclass(frozen=True, slots=True)
class ReprovisionPolicy:
    update_hub_assignment: bool = True
    migrate_device_data: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"updateHubAssignment": self.update_hub_assignment, "migrateDeviceData": self.migrate_device_data}

    @staticmethod
    def from_json(doc: object, where: str) -> ReprovisionPolicy:
        if doc is None:
            return DEFAULT_REPROVISION_POLICY
        body = _obj(doc, where)
        return ReprovisionPolicy(
            _opt_bool(body, "updateHubAssignment", where, True),
            _opt_bool(body, "migrateDeviceData", where, True),
        )


DEFAULT_REPROVISION_POLICY = ReprovisionPolicy()


@dataclass(frozen=True, slots=True)
class CustomAllocationDefinition:
    webhook_url: str
    api_version: str

    def to_json(self) -> dict[str, Any]:
        return {"webhookUrl": self.webhook_url, "apiVersion": self.api_version}

    @staticmethod
    def from_json(doc: object, where: str) -> CustomAllocationDefinition:
        body = _obj(doc, where)
        url = _req_str(body, "webhookUrl", where)
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"{where}.webhookUrl must be an http(s) URL")
        return CustomAllocationDefinition(url, _req_str(body, "apiVersion", where))


@dataclass(frozen=True, slots=True)
class InitialTwin:
    """`{tags, properties: {desired}}`; both are free-form JSON objects."""

    tags: Mapping[str, Any] = field(default_factory=dict)
    desired: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"tags": dict(self.tags), "properties": {"desired": dict(self.desired)}}

    @staticmethod
    def from_json(doc: object, where: str) -> InitialTwin | None:
        if doc is None:
            return None
        body = _obj(doc, where)
        tags = _opt_object(body, "tags", where) or {}
        props = _opt_object(body, "properties", where) or {}
        desired = _opt_object(props, "desired", f"{where}.properties") or {}
        return InitialTwin(tags, desired)


@dataclass(frozen=True, slots=True)
class EnrollmentSettings:
    """The fields individual enrollments and enrollment groups share."""

    provisioning_status: ProvisioningStatus = "enabled"
    allocation_policy: AllocationPolicy | None = None
    iot_hubs: tuple[str, ...] = ()
    iot_hub_host_name: str | None = None
    reprovision_policy: ReprovisionPolicy = DEFAULT_REPROVISION_POLICY
    initial_twin: InitialTwin | None = None
    iot_edge: bool = False
    custom_allocation_definition: CustomAllocationDefinition | None = None

    @property
    def enabled(self) -> bool:
        return self.provisioning_status == "enabled"

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "provisioningStatus": self.provisioning_status,
                "allocationPolicy": self.allocation_policy,
                "iotHubs": list(self.iot_hubs),
                "iotHubHostName": self.iot_hub_host_name,
                "reprovisionPolicy": self.reprovision_policy.to_json(),
                "initialTwin": self.initial_twin.to_json() if self.initial_twin else None,
                "capabilities": {"iotEdge": self.iot_edge},
                "customAllocationDefinition": (
                    self.custom_allocation_definition.to_json() if self.custom_allocation_definition else None
                ),
            }
        )

    @staticmethod
    def from_json(body: Mapping[str, Any], where: str) -> EnrollmentSettings:
        status = body.get("provisioningStatus") or "enabled"
        if status not in _PROVISIONING_STATUSES:
            raise InvalidInput(f"{where}.provisioningStatus must be enabled or disabled")
        policy = body.get("allocationPolicy")
        if policy is not None and policy not in ALLOCATION_POLICIES:
            raise InvalidInput(f"{where}.allocationPolicy must be one of {', '.join(ALLOCATION_POLICIES)}")
        hubs = body.get("iotHubs") or []
        if not isinstance(hubs, list) or not all(isinstance(h, str) and h for h in hubs):
            raise InvalidInput(f"{where}.iotHubs must be a list of hub host names")
        caps = _opt_object(body, "capabilities", where) or {}
        custom = body.get("customAllocationDefinition")
        settings = EnrollmentSettings(
            provisioning_status=cast(ProvisioningStatus, status),
            allocation_policy=cast(AllocationPolicy | None, policy),
            iot_hubs=tuple(hubs),
            iot_hub_host_name=_opt_str(body, "iotHubHostName", where),
            reprovision_policy=ReprovisionPolicy.from_json(body.get("reprovisionPolicy"), f"{where}.reprovisionPolicy"),
            initial_twin=InitialTwin.from_json(body.get("initialTwin"), f"{where}.initialTwin"),
            iot_edge=_opt_bool(caps, "iotEdge", f"{where}.capabilities", False),
            custom_allocation_definition=(
                CustomAllocationDefinition.from_json(custom, f"{where}.customAllocationDefinition")
                if custom is not None
                else None
            ),
        )
        if settings.allocation_policy == "custom" and settings.custom_allocation_definition is None:
            raise InvalidInput(f"{where}: allocationPolicy custom needs customAllocationDefinition")
        return settings


def _stamp_json(etag: str | None, created: datetime | None, updated: datetime | None) -> dict[str, Any]:
    return _drop_none(
        {
            "etag": etag,
            "createdDateTimeUtc": format_time(created) if created else None,
            "lastUpdatedDateTimeUtc": format_time(updated) if updated else None,
        }
    )


# --------------------------------------------------------------------------- enrollments


@dataclass(frozen=True, slots=True)
class IndividualEnrollment:
    registration_id: str
    attestation: Attestation
    settings: EnrollmentSettings = field(default_factory=EnrollmentSettings)
    device_id: str | None = None
    optional_device_information: Mapping[str, Any] | None = None
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def with_status(self, status: ProvisioningStatus) -> IndividualEnrollment:
        return replace(self, settings=replace(self.settings, provisioning_status=status))

    def to_json(self, include_keys: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "registrationId": self.registration_id,
            "attestation": self.attestation.to_json(include_keys),
        }
        if self.device_id:
            doc["deviceId"] = self.device_id
        if self.optional_device_information is not None:
            doc["optionalDeviceInformation"] = dict(self.optional_device_information)
        doc.update(self.settings.to_json())
        doc.update(_stamp_json(self.etag, self.created, self.updated))
        return doc

    @staticmethod
    def from_json(doc: object, where: str = "enrollment") -> IndividualEnrollment:
        body = _obj(doc, where)
        registration_id = check_registration_id(_req_str(body, "registrationId", where))
        device_id = _opt_str(body, "deviceId", where)
        if device_id is not None and device_id != "":
            check_registration_id(device_id)
        return IndividualEnrollment(
            registration_id=registration_id,
            attestation=Attestation.from_json(body.get("attestation"), f"{where}.attestation", group=False),
            settings=EnrollmentSettings.from_json(body, where),
            device_id=device_id or None,
            optional_device_information=_opt_object(body, "optionalDeviceInformation", where),
            etag=_opt_str(body, "etag", where),
        )


@dataclass(frozen=True, slots=True)
class EnrollmentGroup:
    enrollment_group_id: str
    attestation: Attestation
    settings: EnrollmentSettings = field(default_factory=EnrollmentSettings)
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def with_status(self, status: ProvisioningStatus) -> EnrollmentGroup:
        return replace(self, settings=replace(self.settings, provisioning_status=status))

    def to_json(self, include_keys: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "enrollmentGroupId": self.enrollment_group_id,
            "attestation": self.attestation.to_json(include_keys),
        }
        doc.update(self.settings.to_json())
        doc.update(_stamp_json(self.etag, self.created, self.updated))
        return doc

    @staticmethod
    def from_json(doc: object, where: str = "enrollmentGroup") -> EnrollmentGroup:
        body = _obj(doc, where)
        group_id = _req_str(body, "enrollmentGroupId", where)
        try:
            check_registration_id(group_id)
        except InvalidInput as exc:
            raise InvalidInput(exc.message.replace("registration id", "enrollment group id")) from exc
        return EnrollmentGroup(
            enrollment_group_id=group_id,
            attestation=Attestation.from_json(body.get("attestation"), f"{where}.attestation", group=True),
            settings=EnrollmentSettings.from_json(body, where),
            etag=_opt_str(body, "etag", where),
        )


# --------------------------------------------------------------------------- CA certificates


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

    @property
    def sha256_thumbprint(self) -> str:
        return str(self.info.get("sha256Thumbprint", "")).upper()

    def to_json(self) -> dict[str, Any]:
        """The ARM-style certificate description (azure-wire-protocol.md section 5)."""
        return {
            "name": self.name,
            "etag": self.etag,
            "properties": _drop_none(
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
                }
            ),
        }


# --------------------------------------------------------------------------- service config


@dataclass(frozen=True, slots=True)
class LinkedHub:
    host_name: str
    allocation_weight: int = 1
    apply_allocation_policy: bool = True
    location: str | None = None

    def __post_init__(self) -> None:
        if not self.host_name:
            raise InvalidInput("a linked hub needs a host name")
        if not 1 <= self.allocation_weight <= 1000:
            raise InvalidInput(f"allocationWeight of hub {self.host_name} must be 1..1000")

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "name": self.host_name,
                "allocationWeight": self.allocation_weight,
                "applyAllocationPolicy": self.apply_allocation_policy,
                "location": self.location,
            }
        )


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    id_scope: str
    default_allocation_policy: AllocationPolicy = "hashed"

    def __post_init__(self) -> None:
        if self.default_allocation_policy == "custom":
            raise InvalidInput("the service default allocation policy cannot be custom")
        if self.default_allocation_policy not in ALLOCATION_POLICIES:
            raise InvalidInput(f"unknown allocation policy {self.default_allocation_policy!r}")


# --------------------------------------------------------------------------- registrations


@dataclass(frozen=True, slots=True)
class RegistrationRecord:
    """What the service remembers of one registration id (DeviceRegistrationState).

    `created` survives reprovisioning; `updated` and `etag` change with every registration.
    `operation_id` is the opaque id of the latest register operation, which the device polls.
    `enrollment_group_id` names the group that admitted the device (None for individual).
    """

    registration_id: str
    status: RegistrationStatus
    operation_id: str
    substatus: Substatus | None = None
    assigned_hub: str | None = None
    device_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    payload: Any = None
    attestation_type: AttestationType | None = None
    enrollment_group_id: str | None = None
    x509_thumbprint: str | None = None
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The DeviceRegistrationState / registrationState document."""
        doc: dict[str, Any] = _drop_none(
            {
                "registrationId": self.registration_id,
                "assignedHub": self.assigned_hub,
                "deviceId": self.device_id,
                "status": self.status,
                "substatus": self.substatus,
                "errorCode": self.error_code,
                "errorMessage": self.error_message,
                "payload": self.payload,
            }
        )
        doc.update(_stamp_json(self.etag, self.created, self.updated))
        if self.attestation_type == "x509":
            doc["x509"] = _drop_none({"enrollmentGroupId": self.enrollment_group_id})
        elif self.attestation_type == "symmetricKey":
            doc["symmetricKey"] = _drop_none({"enrollmentGroupId": self.enrollment_group_id})
        elif self.attestation_type == "tpm":
            doc["tpm"] = {}
        return doc
