"""Registration records: what the service remembers of each registration id.

A record's status moves only as `provisioning.lifecycle` allows; the pipeline
(`provisioning.service`) writes it, the device polls it, operators list and delete it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from iotdps.enrollment.models import AttestationType
from iotdps.jsonfields import drop_none, stamps

__all__ = ["RegistrationRecord", "RegistrationStatus", "Substatus"]

RegistrationStatus = Literal["unassigned", "assigning", "assigned", "failed", "disabled"]
Substatus = Literal["initialAssignment", "deviceDataMigrated", "deviceDataReset", "reprovisionedToInitialAssignment"]


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
    # X.509: the path the device was admitted under (leaf first, to its trust anchor), DER in
    # base64, so that operators' views can tell when it is revoked (provisioning.record_view).
    x509_path: tuple[str, ...] = ()
    # TPM: the second activation blob (azure-wire-protocol.md 3.2 step 5), which wraps the
    # device's hub key for its TPM. Not a secret: only that TPM can open it.
    tpm_authentication_key: str | None = None
    # Certificate issuance (issue 18): the trust bundle (id, version) the device last received,
    # and the SHA-256 thumbprint of the certificate it was last issued.
    trust_bundle_id: str | None = None
    trust_bundle_version: int | None = None
    issued_certificate: str | None = None
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The DeviceRegistrationState / registrationState document."""
        doc: dict[str, Any] = drop_none(
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
        doc.update(stamps(self.etag, self.created, self.updated))
        if self.attestation_type == "x509":
            doc["x509"] = drop_none({"enrollmentGroupId": self.enrollment_group_id})
        elif self.attestation_type == "symmetricKey":
            doc["symmetricKey"] = drop_none({"enrollmentGroupId": self.enrollment_group_id})
        elif self.attestation_type == "tpm":
            doc["tpm"] = drop_none({"authenticationKey": self.tpm_authentication_key})
        return doc
