"""One registration's values: the request an edge parsed, the plan for an admitted device, the
allocation, and the outcome the edge answers from.

Architecture's "authorization returns a plan": attestation and precedence (an `Authentication`)
and the service settings decide the device id, the enrollment settings, the allocation policy
and the hub identity's credentials once (`plan_for`); the later phases of `provisioning.service`
only execute the plan.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from iotdps.allocation.custom import WebhookAllocation
from iotdps.allocation.hubs import LinkedHub
from iotdps.allocation.policy import allocate_builtin
from iotdps.attestation.authentication import Authentication
from iotdps.enrollment.models import (
    AllocationPolicy,
    AttestationType,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
)
from iotdps.evidence import Credential
from iotdps.hub.devices import DeviceAuth
from iotdps.ids import same_registration_id
from iotdps.pki.issuing.base import IssuedChain
from iotdps.provisioning.records import RegistrationRecord, RegistrationStatus
from iotdps.provisioning.settings import ServiceSettings
from iotdps.refusals import DeviceAnswer, RefusalReason, Refused, device_answer

__all__ = [
    "Allocated",
    "RegistrationOutcome",
    "RegistrationPlan",
    "RegistrationRequest",
    "allocate_builtin_for",
    "new_operation_id",
    "plan_for",
    "settled",
]


def new_operation_id() -> str:
    """Opaque, unguessable, shaped like real DPS ids (`5.<16 hex>.<uuid>`); no `$` or `&`."""
    return f"5.{secrets.token_hex(8)}.{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """One register call as an edge parsed it.

    `credential`: `X509Evidence` (TLS chain), `SasCredential` or `TpmEvidence`.
    `csr`: the CSR text of an api-version that carries one (pki.issuance_wire), else None.
    `api_version`: what the device asked with; decides the issuance fields of the answer.
    `payload`: any JSON; it reaches only the custom-allocation webhook.
    `operation_id`: an edge that answers 202 before the pipeline finishes passes the id it
    already told the device; otherwise one is generated.
    """

    id_scope: str
    registration_id: str
    credential: Credential | None
    payload: Any = None
    csr: str | None = None
    operation_id: str | None = None
    # An edge that already ran `authenticate` for this credential (MQTT does at CONNECT) passes
    # the result, so the read phase does not repeat attestation and precedence.
    authentication: Authentication | None = None
    # The device's IP address as the edge saw it: a refusal is counted under it.
    peer: str | None = None
    api_version: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrationOutcome:
    """The result of `register`, `operation_status` or `registration_status`.

    `record` None: refused before any enrollment matched; the edge answers `answer` as an error.
    `record` set: the operation's state (assigned, or failed/disabled with `reason` set).
    `message` and `steps` are for operators and logs, never for the device.
    """

    operation_id: str | None
    record: RegistrationRecord | None
    reason: RefusalReason | None = None
    message: str = ""
    steps: tuple[str, ...] = field(default=())
    # registrationState fields certificate issuance adds for the device's api-version.
    extra_state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> DeviceAnswer | None:
        return device_answer(self.reason) if self.reason is not None else None

    @property
    def status(self) -> RegistrationStatus | None:
        return self.record.status if self.record is not None else None

    def operation_json(self) -> dict[str, Any]:
        """RegistrationOperationStatus (azure-wire-protocol.md 1.6)."""
        if self.record is None or self.operation_id is None:
            raise ValueError("a refused request has no operation")
        return {
            "operationId": self.operation_id,
            "status": self.record.status,
            "registrationState": {**self.record.to_json(), **self.extra_state},
        }

    def error_json(self) -> dict[str, Any]:
        """The device-facing error body (section 1.7), without trackingId/timestampUtc (the edge adds them)."""
        answer = self.answer
        if answer is None:
            raise ValueError("not a refusal")
        return {"errorCode": answer.error_code, "message": answer.message}


@dataclass(frozen=True, slots=True)
class RegistrationPlan:
    """What an admitted device gets; the later steps only execute it."""

    registration_id: str
    device_id: str
    attestation_type: AttestationType
    individual: IndividualEnrollment | None
    group: EnrollmentGroup | None
    settings: EnrollmentSettings
    policy: AllocationPolicy
    device_auth: DeviceAuth
    webhook_context: Mapping[str, Any]
    leaf_sha256: str | None = None
    x509_path: tuple[str, ...] = ()
    payload: Any = None
    # The device id is the registration id as the device spelled it (a group's SAS device):
    # a registration that already exists keeps the device id it has (`settled`).
    device_id_from_request: bool = False
    peer: str | None = None
    tpm_authentication_key: str | None = None
    api_version: str | None = None
    # The certificate issued in the assigning phase (provisioning.issuance), if any.
    issued: IssuedChain | None = None
    issuer_kind: str | None = None

    @property
    def enrollment(self) -> IndividualEnrollment | EnrollmentGroup:
        if self.individual is not None:
            return self.individual
        assert self.group is not None
        return self.group


def plan_for(request: RegistrationRequest, auth: Authentication, settings: ServiceSettings) -> RegistrationPlan:
    """The plan for a device that `auth` admitted."""
    decision = auth.decision
    individual = decision.individual
    enrollment_settings = (individual or decision.group).settings  # type: ignore[union-attr]
    # Device id (azure-wire-protocol.md 1.4): an individual enrollment's deviceId when set, else
    # the registration id. Registration ids are case-insensitive, device ids are not (IoT Hub),
    # so which spelling: for X.509 the leaf's CN as written (the hub compares CN and device id
    # exactly), for an individual enrollment its own registrationId, for a group device the
    # device's spelling at its first registration (`settled`).
    from_request = False
    if individual is not None and individual.device_id:
        device_id = individual.device_id
    elif auth.common_name:
        device_id = auth.common_name
    elif individual is not None:
        device_id = individual.registration_id
    else:
        device_id, from_request = request.registration_id, True
    assert auth.device_auth is not None and auth.attestation_type is not None
    return RegistrationPlan(
        registration_id=request.registration_id,
        device_id=device_id,
        attestation_type=auth.attestation_type,
        individual=decision.individual,
        group=decision.group,
        settings=enrollment_settings,
        policy=enrollment_settings.allocation_policy or settings.default_allocation_policy,
        device_auth=auth.device_auth,
        webhook_context=auth.webhook_context,
        leaf_sha256=auth.leaf_sha256,
        x509_path=auth.x509_path,
        payload=request.payload,
        device_id_from_request=from_request,
        peer=request.peer,
        tpm_authentication_key=auth.tpm_authentication_key,
        api_version=request.api_version,
    )


def settled(plan: RegistrationPlan, current: RegistrationRecord | None) -> RegistrationPlan:
    """The plan for a registration that may already exist. `GDEV-1` and `gdev-1` are one
    registration (iotdps.ids): it keeps the spelling it was first made with and, when the device
    id is the device's spelling of it, its device id, so one device never becomes two hub
    identities (or a renamed one) by changing case."""
    if current is None:
        return plan
    changes: dict[str, Any] = {"registration_id": current.registration_id}
    if plan.device_id_from_request and current.device_id and same_registration_id(current.device_id, plan.device_id):
        changes["device_id"] = current.device_id
    return replace(plan, **changes)


@dataclass(frozen=True, slots=True)
class Allocated:
    """Phase 2's answer: the hub, or why there is none."""

    hub: str | None = None  # None: not allocated (the device keeps its hub) or refused
    refusal: Refused | None = None
    webhook: WebhookAllocation | None = None


def allocate_builtin_for(
    plan: RegistrationPlan, linked: Sequence[LinkedHub], unavailable: frozenset[str] = frozenset()
) -> Allocated:
    """A built-in policy's hub for the plan (pure: no store, no webhook); `unavailable`: linked
    hubs no running node serves (allocation.policy)."""
    try:
        hub = allocate_builtin(plan.policy, plan.registration_id, plan.settings, linked, unavailable)
        return Allocated(hub=hub.host_name)
    except Refused as exc:
        return Allocated(refusal=exc)
