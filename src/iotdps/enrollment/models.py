"""Enrollments and enrollment groups, in the shapes of the Azure DPS service API.

Every record is an immutable dataclass with `to_json()` (the camelCase document the DPS
service API returns, azure-wire-protocol.md section 4) and `from_json()` (strict: wrong types
and bad values raise InvalidInput naming the field). The store keeps each record as that
document plus a few indexed key columns, so the API, the CLI and the store agree on one shape.

Secrets (symmetric keys) are held in `Secret` so that a record can be logged or printed
without leaking them; `to_json(include_keys=False)` leaves them out, as the service API's GET
does (keys only come back from `attestationmechanism`).

The other records of the service live with what they are about: uploaded CA certificates in
`enrollment.cas`, linked hubs in `allocation.hubs`, the service settings in
`provisioning.settings` and registration records in `provisioning.records`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, cast

from iotdps.errors import InvalidInput
from iotdps.ids import check_registration_id
from iotdps.jsonfields import drop_none, obj, opt_bool, opt_object, opt_str, req_str, stamps
from iotdps.pki.csr_policy import IssuancePolicy
from iotdps.pki.trust_bundle import check_bundle_id
from iotdps.secret import Secret

__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_REPROVISION_POLICY",
    "AllocationPolicy",
    "Attestation",
    "AttestationType",
    "CertificateSlot",
    "CustomAllocationDefinition",
    "EnrollmentGroup",
    "EnrollmentSettings",
    "IndividualEnrollment",
    "InitialTwin",
    "ProvisioningStatus",
    "ReprovisionPolicy",
    "SymmetricKeyAttestation",
    "TpmAttestation",
    "X509Attestation",
    "generate_symmetric_key",
    "generate_tpm_challenge_key",
]

ProvisioningStatus = Literal["enabled", "disabled"]
AllocationPolicy = Literal["hashed", "geoLatency", "static", "custom"]
AttestationType = Literal["x509", "symmetricKey", "tpm"]

ALLOCATION_POLICIES: tuple[str, ...] = ("hashed", "geoLatency", "static", "custom")
_PROVISIONING_STATUSES: tuple[str, ...] = ("enabled", "disabled")
# Symmetric keys supplied by a user: 16..64 bytes; generated ones are 64 bytes (DPS docs).
_KEY_MIN, _KEY_MAX, _KEY_GENERATED = 16, 64, 64
# The HMAC-SHA256 key an activation blob carries (attestation.tpm_crypto.ID_KEY_BYTES).
_TPM_ID_KEY_BYTES = 32


# --------------------------------------------------------------------------- symmetric keys


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
                out[key] = drop_none(
                    {
                        "primary": pair[0].to_json() if pair[0] else None,
                        "secondary": pair[1].to_json() if pair[1] else None,
                    }
                )
        if any(self.ca_references):
            out["caReferences"] = drop_none({"primary": self.ca_references[0], "secondary": self.ca_references[1]})
        return out

    @staticmethod
    def from_json(doc: object, where: str) -> X509Attestation:
        body = obj(doc, where)

        def slots(key: str) -> tuple[CertificateSlot | None, CertificateSlot | None]:
            pair = opt_object(body, key, where) or {}
            result: list[CertificateSlot | None] = []
            for which in ("primary", "secondary"):
                slot = pair.get(which)
                if slot is None:
                    result.append(None)
                    continue
                slot_doc = obj(slot, f"{where}.{key}.{which}")
                cert = req_str(slot_doc, "certificate", f"{where}.{key}.{which}")
                info = opt_object(slot_doc, "info", f"{where}.{key}.{which}") or {}
                result.append(CertificateSlot(cert, info))
            return result[0], result[1]

        refs = opt_object(body, "caReferences", where) or {}
        ca_refs = (
            opt_str(refs, "primary", f"{where}.caReferences"),
            opt_str(refs, "secondary", f"{where}.caReferences"),
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
        body = obj(doc, where) if doc is not None else {}
        primary = body.get("primaryKey")
        secondary = body.get("secondaryKey")
        return SymmetricKeyAttestation(
            _check_key(primary, f"{where}.primaryKey") if primary else generate_symmetric_key(),
            _check_key(secondary, f"{where}.secondaryKey") if secondary else generate_symmetric_key(),
        )


def generate_tpm_challenge_key() -> Secret[str]:
    """The 32-byte HMAC key a TPM enrollment's challenges carry (base64)."""
    return Secret(base64.b64encode(secrets.token_bytes(_TPM_ID_KEY_BYTES)).decode("ascii"))


@dataclass(frozen=True, slots=True)
class TpmAttestation:
    """A TPM individual enrollment: the device's EK (its identity) and optionally its SRK.

    `challenge_key` is the ID key every 401 challenge of this enrollment wraps for the TPM
    (azure-wire-protocol.md 3.2); the device's SAS must be signed with it. The service makes it
    when the enrollment is written and it is never part of `to_json` (not even with keys): the
    store keeps it beside the document (`store._records`), so creating the enrollment again
    gives a new key and a challenge answered for the old enrollment no longer verifies.
    """

    endorsement_key: str
    storage_root_key: str | None = None
    challenge_key: Secret[str] = field(default_factory=generate_tpm_challenge_key, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return drop_none({"endorsementKey": self.endorsement_key, "storageRootKey": self.storage_root_key})

    @staticmethod
    def from_json(doc: object, where: str) -> TpmAttestation:
        body = obj(doc, where)
        ek = req_str(body, "endorsementKey", where).strip()
        srk = opt_str(body, "storageRootKey", where)
        srk = srk.strip() or None if srk is not None else None
        # Whether these are usable TPM keys is checked where enrollments are written
        # (provisioning.admin, with attestation.tpm_crypto); here only the wire form.
        for name, value in (("endorsementKey", ek), ("storageRootKey", srk)):
            if value is not None:
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise InvalidInput(f"{where}.{name}: not base64") from exc
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
        body = obj(doc, where)
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
        body = obj(doc, where)
        return ReprovisionPolicy(
            opt_bool(body, "updateHubAssignment", where, True),
            opt_bool(body, "migrateDeviceData", where, True),
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
        body = obj(doc, where)
        url = req_str(body, "webhookUrl", where)
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"{where}.webhookUrl must be an http(s) URL")
        return CustomAllocationDefinition(url, req_str(body, "apiVersion", where))


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
        body = obj(doc, where)
        tags = opt_object(body, "tags", where) or {}
        props = opt_object(body, "properties", where) or {}
        desired = opt_object(props, "desired", f"{where}.properties") or {}
        return InitialTwin(tags, desired)


def _bundle_id(value: object, where: str) -> str:
    try:
        return check_bundle_id(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from None


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
    # Certificate issuance at registration (issue 18): which issuing CA signs the device's CSR
    # and how, and which trust bundle the registration answer carries.
    issuance_policy: IssuancePolicy | None = None
    trust_bundle_id: str | None = None

    @property
    def enabled(self) -> bool:
        return self.provisioning_status == "enabled"

    def to_json(self) -> dict[str, Any]:
        return drop_none(
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
                "clientCertificateIssuancePolicy": self.issuance_policy.to_json() if self.issuance_policy else None,
                "trustBundleId": self.trust_bundle_id,
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
        caps = opt_object(body, "capabilities", where) or {}
        custom = body.get("customAllocationDefinition")
        issuance = body.get("clientCertificateIssuancePolicy")
        bundle_id = body.get("trustBundleId")
        settings = EnrollmentSettings(
            provisioning_status=cast(ProvisioningStatus, status),
            allocation_policy=cast(AllocationPolicy | None, policy),
            iot_hubs=tuple(hubs),
            iot_hub_host_name=opt_str(body, "iotHubHostName", where),
            reprovision_policy=ReprovisionPolicy.from_json(body.get("reprovisionPolicy"), f"{where}.reprovisionPolicy"),
            initial_twin=InitialTwin.from_json(body.get("initialTwin"), f"{where}.initialTwin"),
            iot_edge=opt_bool(caps, "iotEdge", f"{where}.capabilities", False),
            custom_allocation_definition=(
                CustomAllocationDefinition.from_json(custom, f"{where}.customAllocationDefinition")
                if custom is not None
                else None
            ),
            issuance_policy=(
                IssuancePolicy.from_json(issuance, f"{where}.clientCertificateIssuancePolicy")
                if issuance is not None
                else None
            ),
            trust_bundle_id=(
                _bundle_id(bundle_id, f"{where}.trustBundleId") if bundle_id is not None and bundle_id != "" else None
            ),
        )
        if settings.allocation_policy == "custom" and settings.custom_allocation_definition is None:
            raise InvalidInput(f"{where}: allocationPolicy custom needs customAllocationDefinition")
        return settings


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
        doc.update(stamps(self.etag, self.created, self.updated))
        return doc

    @staticmethod
    def from_json(doc: object, where: str = "enrollment") -> IndividualEnrollment:
        body = obj(doc, where)
        registration_id = check_registration_id(req_str(body, "registrationId", where))
        device_id = opt_str(body, "deviceId", where)
        if device_id is not None and device_id != "":
            check_registration_id(device_id)
        return IndividualEnrollment(
            registration_id=registration_id,
            attestation=Attestation.from_json(body.get("attestation"), f"{where}.attestation", group=False),
            settings=EnrollmentSettings.from_json(body, where),
            device_id=device_id or None,
            optional_device_information=opt_object(body, "optionalDeviceInformation", where),
            etag=opt_str(body, "etag", where),
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
        doc.update(stamps(self.etag, self.created, self.updated))
        return doc

    @staticmethod
    def from_json(doc: object, where: str = "enrollmentGroup") -> EnrollmentGroup:
        body = obj(doc, where)
        group_id = req_str(body, "enrollmentGroupId", where)
        try:
            check_registration_id(group_id)
        except InvalidInput as exc:
            raise InvalidInput(exc.message.replace("registration id", "enrollment group id")) from exc
        return EnrollmentGroup(
            enrollment_group_id=group_id,
            attestation=Attestation.from_json(body.get("attestation"), f"{where}.attestation", group=True),
            settings=EnrollmentSettings.from_json(body, where),
            etag=opt_str(body, "etag", where),
        )
