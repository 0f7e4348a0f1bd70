"""What a device may ask of DPS, transport-agnostic: authenticate, register, and look up its
operation or registration. The MQTT and HTTPS edges call this service and nothing else of the
core; explaining a decision (`provisioning.explain`), the TLS trust anchors (`provisioning.trust`)
and CA proof of possession (`provisioning.ca_admin`) are services of their own.

The register pipeline: attestation -> precedence -> allocation -> write.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from iotdps.allocation.custom import DEFAULT_WEBHOOK_TIMEOUT, build_request, call_webhook
from iotdps.allocation.hubs import LinkedHub
from iotdps.allocation.policy import candidate_hubs
from iotdps.attestation.authentication import Authentication, refuse
from iotdps.attestation.mechanisms import mechanism_for
from iotdps.enrollment.resolve import Decision
from iotdps.errors import ConfigError, InvalidRegistrationId, NotFound
from iotdps.evidence import Credential
from iotdps.ids import check_registration_id
from iotdps.issuance.builtin import BUILTIN_BUNDLE_ID
from iotdps.pki.issuance_wire import csr_field
from iotdps.ports import Clock, Refusal, Store, SystemClock, UnitOfWork, WebhookTransport
from iotdps.provisioning import issuance
from iotdps.provisioning.issuance import IssuerSource
from iotdps.provisioning.lifecycle import assigning_record, check_transition, refused_record
from iotdps.provisioning.placement import place_device
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.registration import (
    Allocated,
    RegistrationOutcome,
    RegistrationPlan,
    RegistrationRequest,
    allocate_builtin_for,
    new_operation_id,
    plan_for,
    settled,
)
from iotdps.provisioning.reprovision import place, previous_hub
from iotdps.provisioning.settings import ServiceSettings
from iotdps.refusals import REVOKED_RECORD, RefusalReason, Refused, device_answer

__all__ = ["ProvisioningService"]


class ProvisioningService:
    """The device-facing provisioning service. One instance per process; no per-device state."""

    def __init__(
        self,
        store: Store,
        clock: Clock | None = None,
        webhook: WebhookTransport | None = None,
        *,
        default_settings: ServiceSettings | None = None,
        webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
        token_max_lifetime: int | None = None,
        issuers: IssuerSource | None = None,
        identity_changed: Callable[[str, str], None] | None = None,
    ) -> None:
        """`identity_changed(hub, device_id)`: told after every committed assignment, so a
        device's live hub connection follows its new identity (LiveDevices.recheck)."""
        self.store = store
        self.identity_changed = identity_changed
        # Working issuers for issuing CA objects (None: certificate issuance is unavailable).
        self.issuers = issuers
        self.clock: Clock = clock or SystemClock()
        self.webhook = webhook
        self.default_settings = default_settings
        self.webhook_timeout = webhook_timeout
        # Seconds a device SAS token may still be valid for (None: the attestation default).
        self.token_max_lifetime = token_max_lifetime

    # ------------------------------------------------------------------ helpers

    async def service_settings(self, uow: UnitOfWork) -> ServiceSettings:
        """The stored settings, else the defaults this service was given; ConfigError without."""
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
        if decision.reason is RefusalReason.CERT_REVOKED and decision.matched:
            await self._mark_revoked(registration_id, new_operation_id(), auth)

    async def _mark_revoked(self, registration_id: str, operation_id: str, auth: Authentication) -> None:
        """A device whose chain verified but is revoked: its existing registration record shows
        it ("disabled", Certificate revoked). Only an existing record changes, and only for a
        device that proved its key (the TLS handshake) under a chain an enrollment matched."""
        decision = auth.decision
        async with self.store.begin() as uow:
            current = await uow.registrations.get(registration_id, for_update=True)
            if current is None or (current.status == "disabled" and current.error_code == REVOKED_RECORD[1]):
                return
            record = refused_record(
                current.registration_id,
                operation_id,
                current,
                RefusalReason.CERT_REVOKED,
                auth.attestation_type,
                decision.group.enrollment_group_id if decision.group else None,
                auth.leaf_sha256,
                auth.x509_path,
            )
            await uow.registrations.put(record)

    async def authenticate(self, id_scope: str, registration_id: str, credential: Credential | None) -> Authentication:
        """Attestation and precedence only, read-only. Edges may call it at MQTT CONNECT to refuse
        bad credentials early (CONNACK 5); `register` calls it again."""
        try:
            check_registration_id(registration_id)
        except InvalidRegistrationId as exc:
            return refuse(None, RefusalReason.INVALID_REGISTRATION_ID, exc.message)
        async with self.store.read() as uow:
            # The device's own enrollment first, though the mechanism decides on it later (the
            # unit answers it again from this read): on PostgreSQL the configuration version
            # that the cached reads below need comes with it, a round trip fewer per device.
            await uow.enrollments.get(registration_id)
            settings = await self.service_settings(uow)
            if id_scope.lower() != settings.id_scope.lower():
                return refuse(
                    None,
                    RefusalReason.ID_SCOPE_MISMATCH,
                    f"ID scope {id_scope!r} is not this service's ({settings.id_scope})",
                )
            if credential is None:
                return refuse(None, RefusalReason.NO_CERTIFICATE, "the device presented no credential")
            mechanism = mechanism_for(credential, max_token_lifetime=self.token_max_lifetime)
            if mechanism is None:
                return refuse(
                    None, RefusalReason.UNSUPPORTED_ATTESTATION, f"unsupported credential {type(credential).__name__}"
                )
            return await mechanism.authenticate(uow, settings.id_scope, registration_id, credential, self.clock.now())

    # ------------------------------------------------------------------ register

    async def register(self, request: RegistrationRequest) -> RegistrationOutcome:
        operation_id = request.operation_id or new_operation_id()
        auth = request.authentication or await self.authenticate(
            request.id_scope, request.registration_id, request.credential
        )
        if auth.decision.admitted and auth.device_auth is None:
            # A TPM enrollment's SAS alone opens status lookups; registering must send the EK too
            # (the second blob needs it), as every TPM SDK does (azure-wire-protocol.md 3.2).
            auth = refuse(
                auth.attestation_type,
                RefusalReason.TPM_INVALID_KEY,
                "a TPM device registers with its endorsement key in the body, not with a SAS alone",
                auth.decision.steps,
            )
        decision = auth.decision
        if not decision.admitted:
            return await self._refused(request, operation_id, auth)
        try:
            pending = issuance.vet(
                (decision.individual or decision.group).settings,  # type: ignore[union-attr]
                request.registration_id,
                request.csr,
            )
        except Refused as exc:
            # A bad, missing or unexpected CSR refuses the request; nothing is written.
            await self._log(
                request.registration_id,
                exc.reason,
                exc.message,
                auth.attestation_type,
                decision.enrollment_name,
                request.peer,
            )
            return RegistrationOutcome(None, None, exc.reason, exc.message, decision.steps)
        if pending is not None:
            return await self._register_issuing(request, operation_id, auth, pending)

        async with self.store.begin() as uow:
            # The record first, locked: on PostgreSQL this read also brings the configuration
            # version that the cached reads after it need, a round trip fewer (bench/PROFILE.md).
            current = await uow.registrations.get(request.registration_id, for_update=True)
            settings = await self.service_settings(uow)
            linked = list(await uow.hubs.list())
            plan = settled(plan_for(request, auth, settings), current)
            if plan.policy != "custom":
                # Built-in allocation is pure, so read, allocate and write share one
                # transaction: one BEGIN/COMMIT and one read of the record fewer per device
                # (bench/PROFILE.md). Only the webhook must run outside a transaction.
                unavailable = frozenset(h.host_name for h in linked if h.unserved(self.clock.now()))
                allocated = allocate_builtin_for(plan, linked, unavailable)
                written = await self._write_in(uow, plan, operation_id, allocated, current)
        if plan.policy != "custom":
            return await self._finish(plan, operation_id, written, decision)
        allocated = await self._allocate_custom(plan, operation_id, current, linked)
        return await self._write(plan, operation_id, allocated, decision)

    async def _register_issuing(
        self,
        request: RegistrationRequest,
        operation_id: str,
        auth: Authentication,
        pending: issuance.PendingIssuance,
    ) -> RegistrationOutcome:
        """A registration that issues a certificate: the issuing CA is called in the assigning
        phase, outside any transaction (an `assigning` record makes the operation visible to
        polls first), then allocation and the write as usual."""
        decision = auth.decision
        async with self.store.begin() as uow:
            current = await uow.registrations.get(request.registration_id, for_update=True)
            settings = await self.service_settings(uow)
            linked = list(await uow.hubs.list())
            plan = settled(plan_for(request, auth, settings), current)
            ca = await uow.issuing_cas.get(pending.policy.certificate_authority_name)
            group_id = plan.group.enrollment_group_id if plan.group else None
            await uow.registrations.put(
                assigning_record(
                    plan.registration_id,
                    operation_id,
                    current,
                    plan.attestation_type,
                    group_id,
                    plan.leaf_sha256,
                    plan.x509_path,
                )
            )
        try:
            issued = await issuance.issue(ca, self.issuers, pending)
        except Refused as exc:
            async with self.store.begin() as uow:
                now_record = await uow.registrations.get(plan.registration_id, for_update=True)
                record = refused_record(
                    plan.registration_id,
                    operation_id,
                    now_record,
                    exc.reason,
                    plan.attestation_type,
                    group_id,
                    plan.leaf_sha256,
                )
                saved = await uow.registrations.put(record)
            return await self._finish(plan, operation_id, (saved, exc), decision)
        plan = replace(plan, issued=issued, issuer_kind=ca.kind if ca is not None else None)
        if plan.policy == "custom":
            allocated = await self._allocate_custom(plan, operation_id, current, linked)
        else:
            allocated = allocate_builtin_for(plan, linked)
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
        if decision.reason is RefusalReason.CERT_REVOKED:
            await self._mark_revoked(request.registration_id, operation_id, auth)
            return RegistrationOutcome(None, None, decision.reason, decision.message, decision.steps)
        # A matched enrollment refused (disabled, wrong key on an individual enrollment...):
        # only "disabled" outcomes become a record; a credential failure must not let an
        # unauthenticated caller overwrite the device's record.
        answer = device_answer(decision.reason)
        if answer.registration_status is None:
            return RegistrationOutcome(None, None, decision.reason, decision.message, decision.steps)
        async with self.store.begin() as uow:
            current = await uow.registrations.get(request.registration_id, for_update=True)
            record = refused_record(
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
    ) -> Allocated:
        definition = plan.settings.custom_allocation_definition
        if definition is None:
            return Allocated(refusal=Refused(RefusalReason.WEBHOOK_FAILED, "custom allocation without a webhook"))
        if self.webhook is None:
            return Allocated(refusal=Refused(RefusalReason.WEBHOOK_FAILED, "no webhook transport is configured"))
        keep = previous_hub(current) if not plan.settings.reprovision_policy.update_hub_assignment else None
        if keep is not None:
            offered = [keep]
        else:
            try:
                offered = [h.host_name for h in candidate_hubs(plan.settings, linked)]
            except Refused as exc:
                return Allocated(refusal=exc)
        # Make the operation visible to polls before the (slow) webhook call.
        async with self.store.begin() as uow:
            now_record = await uow.registrations.get(plan.registration_id, for_update=True)
            group_id = plan.group.enrollment_group_id if plan.group else None
            assigning = assigning_record(
                plan.registration_id,
                operation_id,
                now_record,
                plan.attestation_type,
                group_id,
                plan.leaf_sha256,
                plan.x509_path,
            )
            await uow.registrations.put(assigning)
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
            return Allocated(refusal=exc)
        return Allocated(hub=answer.hub, webhook=answer)

    async def _write(
        self, plan: RegistrationPlan, operation_id: str, allocated: Allocated, decision: Decision
    ) -> RegistrationOutcome:
        async with self.store.begin() as uow:
            current = await uow.registrations.get(plan.registration_id, for_update=True)
            plan = settled(plan, current)
            written = await self._write_in(uow, plan, operation_id, allocated, current)
        return await self._finish(plan, operation_id, written, decision)

    async def _write_in(
        self,
        uow: UnitOfWork,
        plan: RegistrationPlan,
        operation_id: str,
        allocated: Allocated,
        current: RegistrationRecord | None,
    ) -> tuple[RegistrationRecord, Refused | None]:
        """The write phase inside the caller's transaction, given the record as the caller read
        it for update in that transaction: the saved record, and the refusal when no hub could
        be allocated."""
        refusal: Refused | None = None
        keeps_hub = previous_hub(current) is not None and not plan.settings.reprovision_policy.update_hub_assignment
        if allocated.hub is None and not keeps_hub:
            refusal = allocated.refusal or Refused(RefusalReason.NO_HUB, "no hub was allocated")
            record = refused_record(
                plan.registration_id,
                operation_id,
                current,
                refusal.reason,
                plan.attestation_type,
                plan.group.enrollment_group_id if plan.group else None,
                plan.leaf_sha256,
            )
            return await uow.registrations.put(record), refusal
        if plan.issued is not None:
            policy = plan.settings.issuance_policy
            keep = policy is not None and policy.keep_existing_credential
            plan = replace(plan, device_auth=issuance.hub_auth(plan.issued, plan.device_auth, keep=keep))
        placement = place(current, plan.settings.reprovision_policy, None if keeps_hub else allocated.hub)
        device = await place_device(uow, plan, placement, current, allocated.webhook)
        bundle_id, bundle_version = await self._bundle_sent(uow, plan, current)
        issued_sha256: str | None = None
        if plan.issued is not None:
            issued_sha256 = plan.issued.sha256_thumbprint
            enrollment = (
                f"group:{plan.group.enrollment_group_id}" if plan.group else f"individual:{plan.registration_id}"
            )
            await uow.issued_certificates.add(
                issuance.issued_record(
                    plan.issued,
                    plan.registration_id,
                    device.device_id,
                    enrollment,
                    self.clock.now(),
                    plan.issuer_kind or "unknown",
                )
            )
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
            x509_path=plan.x509_path,
            tpm_authentication_key=plan.tpm_authentication_key,
            trust_bundle_id=bundle_id,
            trust_bundle_version=bundle_version,
            issued_certificate=issued_sha256,
        )
        return await uow.registrations.put(record), None

    @staticmethod
    async def _bundle_sent(
        uow: UnitOfWork, plan: RegistrationPlan, current: RegistrationRecord | None
    ) -> tuple[str | None, int | None]:
        """The trust bundle (id, version) this answer carries: the enrollment's, for the
        api-versions that carry one; the other api-versions deliver none, so the device still
        holds what it got before."""
        if plan.api_version is None or csr_field(plan.api_version) is None:
            return (current.trust_bundle_id, current.trust_bundle_version) if current else (None, None)
        # An enrollment that names no bundle gets the server's own CAs, once a rotation of the
        # server CA has published them (provisioning.server_ca); none before that.
        bundle = await uow.trust_bundles.get(plan.settings.trust_bundle_id or BUILTIN_BUNDLE_ID)
        return (bundle.bundle_id, bundle.version) if bundle is not None else (None, None)

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
        if self.identity_changed is not None and saved.assigned_hub and saved.device_id:
            # E.g. a certificate issued without keepExistingCredential: the old SAS key or
            # certificate stops working now, also on a connection made with it before.
            self.identity_changed(saved.assigned_hub, saved.device_id)
        extra = await self._extra_state(saved, plan.api_version)
        return RegistrationOutcome(operation_id, saved, None, "", decision.steps, extra)

    async def _extra_state(self, record: RegistrationRecord, api_version: str | None) -> Mapping[str, Any]:
        """Issuance's registrationState fields; no read at all for api-versions without them."""
        if api_version is None or csr_field(api_version) is None:
            return {}
        async with self.store.read() as uow:
            return await issuance.state_fields(uow, record, api_version)

    # ------------------------------------------------------------------ status lookups

    async def operation_status(
        self,
        id_scope: str,
        registration_id: str,
        operation_id: str,
        credential: Credential | None = None,
        *,
        peer: str | None = None,
        api_version: str | None = None,
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
        return RegistrationOutcome(operation_id, record, extra_state=await self._extra_state(record, api_version))

    async def registration_status(
        self,
        id_scope: str,
        registration_id: str,
        credential: Credential | None = None,
        *,
        peer: str | None = None,
    ) -> RegistrationOutcome:
        """HTTPS `POST /{idScope}/registrations/{id}`: the device's current registration state."""
        refusal = await self._check_caller(id_scope, registration_id, credential, peer)
        if refusal is not None:
            return refusal
        async with self.store.read() as uow:
            record = await uow.registrations.get(registration_id)
        if record is None:
            raise NotFound(f"registration {registration_id} not found")
        # No issuance fields here: the status lookup does not return the issued chain (wire doc 10.1).
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


_MATCHED_OK = frozenset({RefusalReason.ENROLLMENT_DISABLED, RefusalReason.GROUP_DISABLED})
