"""The register pipeline, transport-agnostic: attestation -> precedence -> allocation -> write.

Phases of `register` (architecture.md "authorization returns a plan"):
1. Read (one short transaction): service settings, attestation and enrollment precedence
   (`attestation.mechanisms`), linked hubs, the current registration record. The outcome is an
   `Authentication` and, when admitted, a `RegistrationPlan`.
2. Allocation. Built-in policies are pure and computed here. The custom webhook is called
   OUTSIDE any transaction (a slow webhook must not hold a row lock or SQLite's writer); an
   `assigning` record with the operation id is written first, so a poll during the call sees it.
3. Write (one transaction): re-read the record FOR UPDATE, apply the reprovisioning table
   (`provisioning.reprovision`), create / move / update the hub identity and write the record.
   Any exception rolls all of it back: no half-written registration. Two concurrent
   registrations of one id serialise on the row and the later one sees the earlier's record.

Refusals: every one goes to the refusal log with words for operators. When an enrollment
matched (disabled, or allocation failed), the registration record also shows status
disabled / failed with the terse device-facing errorCode and message; the previous hub and
device id stay on such a record so that a later registration migrates correctly.
The device only ever gets `refusals.device_answer(reason)`.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from cryptography import x509

from iotdps.allocation.custom import DEFAULT_WEBHOOK_TIMEOUT, WebhookAllocation, build_request, call_webhook
from iotdps.allocation.hubs import LinkedHub
from iotdps.allocation.policy import allocate_builtin, candidate_hubs
from iotdps.attestation.authentication import Authentication
from iotdps.attestation.mechanisms import mechanism_for
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import (
    AllocationPolicy,
    AttestationType,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
    InitialTwin,
)
from iotdps.enrollment.resolve import Decision
from iotdps.errors import ConfigError, InvalidInput, InvalidRegistrationId, NotFound
from iotdps.evidence import Credential
from iotdps.ids import check_registration_id, same_registration_id
from iotdps.pki import certs
from iotdps.pki.encoding import certificate_info, load_certificate, load_certificates
from iotdps.ports import Clock, Refusal, Store, SystemClock, UnitOfWork, WebhookTransport
from iotdps.provisioning.lifecycle import check_transition
from iotdps.provisioning.registrations import RegistrationRecord, RegistrationStatus
from iotdps.provisioning.reprovision import Placement, place, previous_hub
from iotdps.provisioning.settings import ServiceSettings
from iotdps.refusals import DeviceAnswer, RefusalReason, Refused, device_answer
from iotdps.registry.models import DeviceAuth, DeviceIdentity, Twin
from iotdps.secret import Secret

__all__ = [
    "DEFAULT_VERIFICATION_CODE_TTL",
    "ProvisioningService",
    "RegistrationOutcome",
    "RegistrationPlan",
    "RegistrationRequest",
    "new_operation_id",
]

DEFAULT_VERIFICATION_CODE_TTL = timedelta(hours=1)


def new_operation_id() -> str:
    """Opaque, unguessable, shaped like real DPS ids (`5.<16 hex>.<uuid>`); no `$` or `&`."""
    return f"5.{secrets.token_hex(8)}.{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """One register call as an edge parsed it.

    `credential`: `X509Evidence` (TLS chain), `SasCredential` or `TpmEvidence`.
    `csr`: accepted and ignored for now (certificate issuance is a later feature).
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
            "registrationState": self.record.to_json(),
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
    payload: Any = None
    # The device id is the registration id as the device spelled it (a group's SAS device):
    # a registration that already exists keeps the device id it has (`_settled`).
    device_id_from_request: bool = False
    peer: str | None = None

    @property
    def enrollment(self) -> IndividualEnrollment | EnrollmentGroup:
        if self.individual is not None:
            return self.individual
        assert self.group is not None
        return self.group


def _plan(request: RegistrationRequest, auth: Authentication, settings: ServiceSettings) -> RegistrationPlan:
    decision = auth.decision
    individual = decision.individual
    enrollment_settings = (individual or decision.group).settings  # type: ignore[union-attr]
    # Device id (azure-wire-protocol.md 1.4): an individual enrollment's deviceId when set, else
    # the registration id. Registration ids are case-insensitive, device ids are not (IoT Hub),
    # so which spelling: for X.509 the leaf's CN as written (the hub compares CN and device id
    # exactly), for an individual enrollment its own registrationId, for a group device the
    # device's spelling at its first registration (`_settled`).
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
        payload=request.payload,
        device_id_from_request=from_request,
        peer=request.peer,
    )


def _settled(plan: RegistrationPlan, current: RegistrationRecord | None) -> RegistrationPlan:
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
class _Allocated:
    hub: str | None = None  # None: not allocated (the device keeps its hub) or refused
    refusal: Refused | None = None
    webhook: WebhookAllocation | None = None


class ProvisioningService:
    """The provisioning core. One instance per process; it holds no per-device state."""

    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        webhook: WebhookTransport | None = None,
        *,
        default_settings: ServiceSettings | None = None,
        webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
        verification_code_ttl: timedelta = DEFAULT_VERIFICATION_CODE_TTL,
        token_max_lifetime: int | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.webhook = webhook
        self.default_settings = default_settings
        self.webhook_timeout = webhook_timeout
        self.verification_code_ttl = verification_code_ttl
        # Seconds a device SAS token may still be valid for (None: the attestation default).
        self.token_max_lifetime = token_max_lifetime

    # ------------------------------------------------------------------ helpers

    async def _settings(self, uow: UnitOfWork) -> ServiceSettings:
        stored = await uow.settings.get()
        settings = stored or self.default_settings
        if settings is None:
            raise ConfigError(["the service has no ID scope yet: set the service settings first"])
        return settings

    async def _log(
        self,
        registration_id: str,
        reason: RefusalReason,
        message: str,
        attestation_type: str | None,
        enrollment: str | None,
        peer: str | None,
    ) -> None:
        async with self.store.begin() as uow:
            await uow.refusals.add(
                Refusal(registration_id, reason.value, message, attestation_type, self.clock.now(), enrollment, peer)
            )

    async def record_refusal(self, registration_id: str, auth: Authentication, peer: str | None = None) -> None:
        """Log a refusal an edge made from `authenticate` alone (MQTT CONNACK 5 at CONNECT);
        `peer`: the device's IP address."""
        decision = auth.decision
        if decision.reason is None:
            raise ValueError("not a refusal")
        await self._log(
            registration_id, decision.reason, decision.message, auth.attestation_type, decision.enrollment_name, peer
        )

    async def authenticate(self, id_scope: str, registration_id: str, credential: Credential | None) -> Authentication:
        """Attestation and precedence only, read-only. Edges may call it at MQTT CONNECT to refuse
        bad credentials early (CONNACK 5); `register` calls it again."""
        try:
            check_registration_id(registration_id)
        except InvalidRegistrationId as exc:
            return _auth_refusal(RefusalReason.INVALID_REGISTRATION_ID, exc.message)
        async with self.store.read() as uow:
            # The device's own enrollment first, though the mechanism decides on it later (the
            # unit answers it again from this read): on PostgreSQL the configuration version
            # that the cached reads below need comes with it, a round trip fewer per device.
            await uow.enrollments.get(registration_id)
            settings = await self._settings(uow)
            if id_scope.lower() != settings.id_scope.lower():
                return _auth_refusal(
                    RefusalReason.ID_SCOPE_MISMATCH,
                    f"ID scope {id_scope!r} is not this service's ({settings.id_scope})",
                )
            if credential is None:
                return _auth_refusal(RefusalReason.NO_CERTIFICATE, "the device presented no credential")
            mechanism = mechanism_for(credential, max_token_lifetime=self.token_max_lifetime)
            if mechanism is None:
                return _auth_refusal(
                    RefusalReason.UNSUPPORTED_ATTESTATION, f"unsupported credential {type(credential).__name__}"
                )
            return await mechanism.authenticate(uow, settings.id_scope, registration_id, credential, self.clock.now())

    async def trust_anchors(self) -> list[x509.Certificate]:
        """What the TLS layer's trust store must hold: every verified uploaded CA and every
        individual X.509 enrollment's client certificates (used with PARTIAL_CHAIN).

        From an enrollment only its one device certificate is taken, never a CA certificate:
        with PARTIAL_CHAIN an anchor ends every chain through it, so an intermediate here would
        stop its whole line short of the verified root. The write path refuses both
        (provisioning.admin); this also holds for records an older version stored."""
        out: list[x509.Certificate] = []
        async with self.store.read() as uow:
            for ca in await uow.cas.list():
                if ca.is_verified:
                    out.extend(_load_all(ca.certificate))
            for enrollment in await uow.enrollments.list_x509():
                if enrollment.attestation.x509 is not None:
                    for slot in enrollment.attestation.x509.client_certificates:
                        device = _load_all(slot.certificate)[:1] if slot is not None else []
                        out.extend(c for c in device if not certs.is_ca(c))
        return out

    async def explain(self, registration_id: str, credential: Credential) -> list[str]:
        """The precedence walk and the decision in words, without registering (`iotdps explain`).
        The scope is the service's own; for an admitted device the built-in allocation is shown."""
        async with self.store.read() as uow:
            settings = await self._settings(uow)
            linked = list(await uow.hubs.list())
        auth = await self.authenticate(settings.id_scope, registration_id, credential)
        lines = auth.decision.explain()
        if auth.decision.admitted:
            plan = _plan(RegistrationRequest(settings.id_scope, registration_id, credential), auth, settings)
            lines.append(f"device id: {plan.device_id}; allocation policy: {plan.policy}")
            if plan.policy == "custom":
                lines.append("hub: chosen by the custom allocation webhook (not called by explain)")
            else:
                allocated = _allocate_builtin(plan, linked)
                if allocated.refusal is not None:
                    lines.append(f"hub: none -> {allocated.refusal.reason}: {allocated.refusal.message}")
                else:
                    lines.append(f"hub: {allocated.hub} (unless the reprovision policy keeps the current hub)")
        return lines

    # ------------------------------------------------------------------ register

    async def register(self, request: RegistrationRequest) -> RegistrationOutcome:
        operation_id = request.operation_id or new_operation_id()
        auth = request.authentication or await self.authenticate(
            request.id_scope, request.registration_id, request.credential
        )
        decision = auth.decision
        if not decision.admitted:
            return await self._refused(request, operation_id, auth)

        async with self.store.begin() as uow:
            # The record first, locked: on PostgreSQL this read also brings the configuration
            # version that the cached reads after it need, a round trip fewer (bench/PROFILE.md).
            current = await uow.registrations.get(request.registration_id, for_update=True)
            settings = await self._settings(uow)
            linked = list(await uow.hubs.list())
            plan = _settled(_plan(request, auth, settings), current)
            if plan.policy != "custom":
                # Built-in allocation is pure, so read, allocate and write share one
                # transaction: one BEGIN/COMMIT and one read of the record fewer per device
                # (bench/PROFILE.md). Only the webhook must run outside a transaction.
                written = await self._write_in(uow, plan, operation_id, _allocate_builtin(plan, linked), current)
        if plan.policy != "custom":
            return await self._finish(plan, operation_id, written, decision)
        allocated = await self._allocate_custom(plan, operation_id, current, linked)
        return await self._write(plan, operation_id, allocated, decision)

    async def _refused(
        self, request: RegistrationRequest, operation_id: str, auth: Authentication
    ) -> RegistrationOutcome:
        decision = auth.decision
        assert decision.reason is not None
        await self._log(
            request.registration_id,
            decision.reason,
            decision.message,
            auth.attestation_type,
            decision.enrollment_name,
            request.peer,
        )
        if not decision.matched:
            return RegistrationOutcome(None, None, decision.reason, decision.message, decision.steps)
        # A matched enrollment refused (disabled, wrong key on an individual enrollment...):
        # only "disabled" outcomes become a record; a credential failure must not let an
        # unauthenticated caller overwrite the device's record.
        answer = device_answer(decision.reason)
        if answer.registration_status is None:
            return RegistrationOutcome(None, None, decision.reason, decision.message, decision.steps)
        async with self.store.begin() as uow:
            current = await uow.registrations.get(request.registration_id, for_update=True)
            record = _failed_record(
                current.registration_id if current is not None else request.registration_id,
                operation_id,
                current,
                decision.reason,
                auth.attestation_type,
                decision.group.enrollment_group_id if decision.group else None,
                auth.leaf_sha256,
            )
            saved = await uow.registrations.put(record)
        return RegistrationOutcome(operation_id, saved, decision.reason, decision.message, decision.steps)

    async def _allocate_custom(
        self,
        plan: RegistrationPlan,
        operation_id: str,
        current: RegistrationRecord | None,
        linked: Sequence[LinkedHub],
    ) -> _Allocated:
        definition = plan.settings.custom_allocation_definition
        if definition is None:
            return _Allocated(refusal=Refused(RefusalReason.WEBHOOK_FAILED, "custom allocation without a webhook"))
        if self.webhook is None:
            return _Allocated(refusal=Refused(RefusalReason.WEBHOOK_FAILED, "no webhook transport is configured"))
        keep = previous_hub(current) if not plan.settings.reprovision_policy.update_hub_assignment else None
        if keep is not None:
            offered = [keep]
        else:
            try:
                offered = [h.host_name for h in candidate_hubs(plan.settings, linked)]
            except Refused as exc:
                return _Allocated(refusal=exc)
        # Make the operation visible to polls before the (slow) webhook call.
        async with self.store.begin() as uow:
            now_record = await uow.registrations.get(plan.registration_id, for_update=True)
            await uow.registrations.put(_assigning_record(plan, operation_id, now_record))
        body = build_request(
            plan.enrollment,
            plan.registration_id,
            offered,
            attestation_context=plan.webhook_context,
            current_hub=previous_hub(current),
            current_device_id=current.device_id if current is not None and previous_hub(current) else None,
            payload=plan.payload,
        )
        try:
            answer = await call_webhook(self.webhook, definition, body, offered, self.webhook_timeout)
        except Refused as exc:
            return _Allocated(refusal=exc)
        return _Allocated(hub=answer.hub, webhook=answer)

    async def _write(
        self, plan: RegistrationPlan, operation_id: str, allocated: _Allocated, decision: Decision
    ) -> RegistrationOutcome:
        async with self.store.begin() as uow:
            current = await uow.registrations.get(plan.registration_id, for_update=True)
            plan = _settled(plan, current)
            written = await self._write_in(uow, plan, operation_id, allocated, current)
        return await self._finish(plan, operation_id, written, decision)

    async def _write_in(
        self,
        uow: UnitOfWork,
        plan: RegistrationPlan,
        operation_id: str,
        allocated: _Allocated,
        current: RegistrationRecord | None,
    ) -> tuple[RegistrationRecord, Refused | None]:
        """The write phase inside the caller's transaction, given the record as the caller read
        it for update in that transaction: the saved record, and the refusal when no hub could
        be allocated."""
        refusal: Refused | None = None
        keeps_hub = previous_hub(current) is not None and not plan.settings.reprovision_policy.update_hub_assignment
        if allocated.hub is None and not keeps_hub:
            refusal = allocated.refusal or Refused(RefusalReason.NO_HUB, "no hub was allocated")
            record = _failed_record(
                plan.registration_id,
                operation_id,
                current,
                refusal.reason,
                plan.attestation_type,
                plan.group.enrollment_group_id if plan.group else None,
                plan.leaf_sha256,
            )
            return await uow.registrations.put(record), refusal
        placement = place(current, plan.settings.reprovision_policy, None if keeps_hub else allocated.hub)
        device = await self._place_device(uow, plan, placement, current, allocated.webhook)
        same_op = current is not None and current.operation_id == operation_id
        check_transition(current.status if current else None, "assigned", same_operation=same_op)
        record = RegistrationRecord(
            registration_id=plan.registration_id,
            status="assigned",
            operation_id=operation_id,
            substatus=placement.substatus,
            assigned_hub=device.hub,
            device_id=device.device_id,
            payload=allocated.webhook.payload if allocated.webhook else None,
            attestation_type=plan.attestation_type,
            enrollment_group_id=plan.group.enrollment_group_id if plan.group else None,
            x509_thumbprint=plan.leaf_sha256,
        )
        return await uow.registrations.put(record), None

    async def _finish(
        self,
        plan: RegistrationPlan,
        operation_id: str,
        written: tuple[RegistrationRecord, Refused | None],
        decision: Decision,
    ) -> RegistrationOutcome:
        """After the write transaction: log a refusal (its own transaction) and answer."""
        saved, refusal = written
        if refusal is not None:
            await self._log(
                plan.registration_id,
                refusal.reason,
                refusal.message,
                plan.attestation_type,
                decision.enrollment_name,
                plan.peer,
            )
            return RegistrationOutcome(operation_id, saved, refusal.reason, refusal.message, decision.steps)
        return RegistrationOutcome(operation_id, saved, None, "", decision.steps)

    async def _place_device(
        self,
        uow: UnitOfWork,
        plan: RegistrationPlan,
        placement: Placement,
        current: RegistrationRecord | None,
        webhook: WebhookAllocation | None,
    ) -> DeviceIdentity:
        """Create, move or update the hub identity as the placement says."""
        old: DeviceIdentity | None = None
        before = previous_hub(current)
        if before is not None and current is not None and current.device_id:
            old = await uow.devices.get(before, current.device_id, for_update=True)
        # Locked: the identity is rewritten from what is read here (its twin included), and a
        # twin update the hub commits meanwhile must wait rather than be overwritten.
        existing = await uow.devices.get(placement.hub, plan.device_id, for_update=True)
        initial = (webhook.initial_twin if webhook and webhook.initial_twin else None) or plan.settings.initial_twin

        # The same device under another spelling of its CN (a new certificate, X.509 device ids
        # follow the CN): the identity is renamed on its hub, its twin kept.
        respelled = (
            existing is None
            and old is not None
            and old.hub == placement.hub
            and same_registration_id(old.device_id, plan.device_id)
            and placement.twin == "keep"
        )
        if existing is None:
            # A fresh identity: migrated data when there is some, else the initial twin.
            if (placement.twin == "migrate" or respelled) and old is not None:
                twin = old.twin
            else:
                twin = Twin(tags=dict(initial.tags), desired=dict(initial.desired)) if initial else Twin()
        elif placement.twin == "migrate" and old is not None:
            twin = old.twin
        elif placement.twin == "reset":
            twin = _twin_from(initial or InitialTwin(), existing.twin)
        elif placement.twin == "initial":
            # The identity survived a deleted registration record: an initial assignment
            # applies the initial twin when there is one and leaves the twin alone otherwise.
            twin = _twin_from(initial, existing.twin)
        else:  # keep
            twin = existing.twin

        if old is not None and (old.hub, old.device_id) != (placement.hub, plan.device_id):
            await uow.devices.delete(old.hub, old.device_id)
        device = DeviceIdentity(
            hub=placement.hub,
            device_id=plan.device_id,
            auth=plan.device_auth,
            status=existing.status if existing is not None else "enabled",
            iot_edge=plan.settings.iot_edge,
            twin=twin,
            registration_id=plan.registration_id,
        )
        return await uow.devices.put(device)

    # ------------------------------------------------------------------ status lookups

    async def operation_status(
        self,
        id_scope: str,
        registration_id: str,
        operation_id: str,
        credential: Credential | None = None,
        *,
        peer: str | None = None,
    ) -> RegistrationOutcome:
        """The device polls its operation. `credential` None: the edge vouches that this
        connection already authenticated as `registration_id` (MQTT). Raises NotFound for an
        unknown or superseded operation id."""
        refusal = await self._check_caller(id_scope, registration_id, credential, peer)
        if refusal is not None:
            return refusal
        async with self.store.read() as uow:
            record = await uow.registrations.get(registration_id)
        if record is None or not secrets.compare_digest(record.operation_id, operation_id):
            raise NotFound(f"operation {operation_id} of {registration_id} not found")
        return RegistrationOutcome(operation_id, record)

    async def registration_status(
        self, id_scope: str, registration_id: str, credential: Credential | None = None, *, peer: str | None = None
    ) -> RegistrationOutcome:
        """HTTPS `POST /{idScope}/registrations/{id}`: the device's current registration state."""
        refusal = await self._check_caller(id_scope, registration_id, credential, peer)
        if refusal is not None:
            return refusal
        async with self.store.read() as uow:
            record = await uow.registrations.get(registration_id)
        if record is None:
            raise NotFound(f"registration {registration_id} not found")
        return RegistrationOutcome(record.operation_id, record)

    async def _check_caller(
        self, id_scope: str, registration_id: str, credential: Credential | None, peer: str | None
    ) -> RegistrationOutcome | None:
        if credential is None:
            return None
        auth = await self.authenticate(id_scope, registration_id, credential)
        # A disabled device may still read its (disabled) record: it proved who it is.
        if auth.decision.admitted or (auth.decision.matched and auth.decision.reason in _MATCHED_OK):
            return None
        assert auth.decision.reason is not None
        await self._log(registration_id, auth.decision.reason, auth.decision.message, auth.attestation_type, None, peer)
        return RegistrationOutcome(None, None, auth.decision.reason, auth.decision.message, auth.decision.steps)

    # ------------------------------------------------------------------ CA proof of possession

    async def upload_ca(
        self, name: str, pem: str, verified: bool = False, if_match: str | None = None
    ) -> CaCertificate:
        """Upload (or replace) a CA certificate. A replaced certificate loses its verification."""
        if not name or any(c in name for c in "/\\?#") or len(name) > 128:
            raise InvalidInput("a CA name is 1..128 characters without / \\ ? #")
        cert = load_certificate(pem)
        ca = CaCertificate(name, certs.to_pem(cert), certificate_info(cert), is_verified=verified)
        async with self.store.begin() as uow:
            existing = await uow.cas.get(name)
            if existing is not None and existing.sha256_thumbprint == ca.sha256_thumbprint and not verified:
                ca = replace(ca, is_verified=existing.is_verified)
            return await uow.cas.put(ca, if_match)

    async def generate_verification_code(self, name: str, if_match: str | None = None) -> tuple[str, CaCertificate]:
        """A fresh random code (single use, expires after `verification_code_ttl`); the previous
        outstanding code, if any, is replaced. Returns the code and the updated record."""
        code = secrets.token_hex(24).upper()
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            updated = replace(
                ca,
                verification_code=Secret(code),
                verification_code_expires=self.clock.now() + self.verification_code_ttl,
            )
            saved = await uow.cas.put(updated, if_match)
        return code, saved

    async def verify_ca(self, name: str, verification_cert_pem: str, if_match: str | None = None) -> CaCertificate:
        """Proof of possession: the certificate's CN is the outstanding code and the CA's key
        signed it. The code is consumed on success."""
        from iotdps.store.codes import code_matches  # stdlib-only helper shared with the store

        presented = load_certificate(verification_cert_pem)
        async with self.store.begin() as uow:
            ca = await uow.cas.get(name)
            if ca is None:
                raise NotFound(f"CA certificate {name} not found")
            if ca.verification_code is None or ca.verification_code_expires is None:
                raise InvalidInput(f"CA {name} has no outstanding verification code; generate one first")
            if self.clock.now() > ca.verification_code_expires:
                raise InvalidInput(f"the verification code of CA {name} has expired; generate a new one")
            cn = certs.common_name(presented) or ""
            if not code_matches(ca.verification_code, cn):
                raise InvalidInput("the verification certificate's CN is not the outstanding verification code")
            if not certs.signed_by(presented, load_certificate(ca.certificate)):
                raise InvalidInput(f"the verification certificate is not signed by CA {name}")
            verified = replace(ca, is_verified=True, verification_code=None, verification_code_expires=None)
            return await uow.cas.put(verified, if_match)


_MATCHED_OK = frozenset({RefusalReason.ENROLLMENT_DISABLED, RefusalReason.GROUP_DISABLED})


def _load_all(pem: str) -> list[x509.Certificate]:
    try:
        return load_certificates(pem)
    except InvalidInput:
        return []


def _auth_refusal(reason: RefusalReason, message: str) -> Authentication:
    return Authentication(Decision(False, reason=reason, message=message), None)


def _allocate_builtin(plan: RegistrationPlan, linked: Sequence[LinkedHub]) -> _Allocated:
    try:
        return _Allocated(hub=allocate_builtin(plan.policy, plan.registration_id, plan.settings, linked).host_name)
    except Refused as exc:
        return _Allocated(refusal=exc)


def _assigning_record(
    plan: RegistrationPlan, operation_id: str, current: RegistrationRecord | None
) -> RegistrationRecord:
    return RegistrationRecord(
        registration_id=plan.registration_id,
        status="assigning",
        operation_id=operation_id,
        substatus=current.substatus if current else None,
        assigned_hub=current.assigned_hub if current else None,
        device_id=current.device_id if current else None,
        attestation_type=plan.attestation_type,
        enrollment_group_id=plan.group.enrollment_group_id if plan.group else None,
        x509_thumbprint=plan.leaf_sha256,
    )


def _failed_record(
    registration_id: str,
    operation_id: str,
    current: RegistrationRecord | None,
    reason: RefusalReason,
    attestation_type: AttestationType | None,
    group_id: str | None,
    leaf_sha256: str | None,
) -> RegistrationRecord:
    answer = device_answer(reason)
    assert answer.registration_status is not None
    same_op = current is not None and current.operation_id == operation_id
    check_transition(current.status if current else None, answer.registration_status, same_operation=same_op)
    return RegistrationRecord(
        registration_id=registration_id,
        status=answer.registration_status,
        operation_id=operation_id,
        substatus=current.substatus if current else None,
        assigned_hub=current.assigned_hub if current else None,
        device_id=current.device_id if current else None,
        error_code=answer.error_code,
        error_message=answer.message,
        attestation_type=attestation_type,
        enrollment_group_id=group_id,
        x509_thumbprint=leaf_sha256,
    )


def _twin_from(initial: InitialTwin | None, base: Twin) -> Twin:
    """`base` with tags and desired replaced by the initial twin (versions move forward)."""
    if initial is None:
        return base
    desired_changed = dict(initial.desired) != dict(base.desired)
    return Twin(
        tags=dict(initial.tags),
        desired=dict(initial.desired),
        reported=base.reported,
        desired_version=base.desired_version + 1 if desired_changed else base.desired_version,
        reported_version=base.reported_version,
        version=base.version + 1,
    )
