"""Certificates issued to a connected device over its hub connection (issue 18, renewal).

The IoT Hub certificate-management preview (azure-wire-protocol.md 10.1) lets a connected
device ask its hub for a certificate: `$iothub/credentials/POST/issueCertificate/?$rid=` with
`{"id", "csr", "replace"}`. The wire side (202, then 200 or an error; one active request per
device, the rate limit, the size limit) is `server.hub_credentials`; this is what the request
does to the service's records, with the same rules as issuance at DPS registration:

1. Whose policy: the hub device's registration record (the device must still be where DPS
   placed it) names its enrollment: its group, or else its individual enrollment. That
   enrollment's `clientCertificateIssuancePolicy` decides; none is CSR_NOT_EXPECTED, a disabled
   enrollment is refused as at DPS.
2. The CSR is vetted by `provisioning.issuance.vet` (size, signature, key type, CN == the
   registration id, no CA rights), exactly as a registration's.
3. The issuing CA named by the policy signs, outside any transaction (a network call for CFSSL).
4. One transaction: the certificate is recorded (`issued_via="hub"`), the device's hub
   identity's issued thumbprints become the new certificate's followed by the previous one's
   (`issuance.renewed_hub_auth`; a kept credential, `keepExistingCredential`, is left alone),
   and the registration record's `issued_certificate` points at the new one. The answer
   carries the enrollment's trust bundle (or the server's own CAs' once a rotation published
   them) as a registration's does, and the record notes the version sent: a device that only
   ever renews over the hub still learns a new server CA before it is activated
   (provisioning.server_ca), and the rotation status counts it.

A refusal is `HubCertificateRefused`: a `RefusalReason` for the refusal log and the device's
terse answer from refusals.DEVICE_ANSWERS, or an own hub code (`status`, `error_code`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from iotdps.enrollment.models import EnrollmentSettings
from iotdps.errors import IotdpsError
from iotdps.issuance.builtin import BUILTIN_BUNDLE_ID
from iotdps.issuance.models import IssuingCa
from iotdps.pki.issuing.base import IssuedChain
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.ports import Clock, Refusal, Store, SystemClock, UnitOfWork
from iotdps.provisioning import issuance
from iotdps.provisioning.issuance import IssuerSource
from iotdps.refusals import RefusalReason, Refused, device_answer

__all__ = ["HubCertificateRefused", "HubCertificates", "PreparedIssue"]

log = logging.getLogger(__name__)

NOT_PROVISIONED = 404001  # IoT Hub's DeviceNotFound: no DPS registration places this device here


class HubCertificateRefused(IotdpsError):
    """No certificate for this request. `status` and `error_code` are the device's answer;
    `message` is for operators (the device gets `device_message`)."""

    def __init__(
        self, status: int, error_code: int, device_message: str, message: str, reason: RefusalReason | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.device_message = device_message
        self.reason = reason

    @classmethod
    def of(cls, exc: Refused) -> HubCertificateRefused:
        """A pipeline refusal with the device answer DPS gives for it; the HTTP-like status is
        the code's first three digits (a DPS `failed` operation answers 200 on its own wire)."""
        answer = device_answer(exc.reason)
        return cls(answer.error_code // 1000, answer.error_code, answer.message, exc.message, exc.reason)


class _ToLog(Exception):
    """A refusal found inside a read, logged once the read is over."""

    def __init__(self, registration_id: str, enrollment: str, refused: Refused) -> None:
        super().__init__(refused.message)
        self.registration_id, self.enrollment, self.refused = registration_id, enrollment, refused


@dataclass(frozen=True, slots=True)
class _Target:
    registration_id: str
    enrollment: str  # "group:<id>" / "individual:<registration id>", as issued records name it
    settings: EnrollmentSettings


@dataclass(frozen=True, slots=True)
class PreparedIssue:
    """A vetted request, ready for the CA (`HubCertificates.complete`)."""

    hub: str
    device_id: str
    target: _Target
    pending: issuance.PendingIssuance
    ca: IssuingCa | None


class HubCertificates:
    def __init__(self, store: Store, issuers: IssuerSource | None, *, clock: Clock | None = None) -> None:
        self._store = store
        self._issuers = issuers
        self._clock: Clock = clock or SystemClock()

    async def prepare(self, hub: str, device_id: str, csr: str) -> PreparedIssue:
        """Find the device's policy and vet its CSR (steps 1-2: store reads and CPU only, so the
        device hears of a bad request at once); HubCertificateRefused when nothing may be issued.
        Store failures raise IotdpsError."""
        try:
            async with self._store.read() as uow:
                target = await self._target(uow, hub, device_id)
                try:
                    if not target.settings.enabled:
                        raise Refused(RefusalReason.ENROLLMENT_DISABLED, f"enrollment {target.enrollment} is disabled")
                    pending = issuance.vet(target.settings, target.registration_id, csr)
                except Refused as exc:
                    raise _ToLog(target.registration_id, target.enrollment, exc) from None
                assert pending is not None  # a CSR was given: no policy refuses, a policy vets it
                ca = await uow.issuing_cas.get(pending.policy.certificate_authority_name)
        except _ToLog as exc:
            # Logged in a transaction of its own, after the read has ended.
            raise await self._refused(exc.registration_id, exc.enrollment, exc.refused) from None
        return PreparedIssue(hub, device_id, target, pending, ca)

    async def complete(self, prepared: PreparedIssue) -> tuple[IssuedChain, TrustBundle | None]:
        """Have the policy's CA sign (outside any transaction), then record it and make it the
        device's hub identity in one transaction (steps 3-4): the chain and the trust bundle
        sent with it; HubCertificateRefused when the CA does not issue."""
        target = prepared.target
        try:
            issued = await issuance.issue(prepared.ca, self._issuers, prepared.pending)
        except Refused as exc:
            raise await self._refused(target.registration_id, target.enrollment, exc) from None
        assert prepared.ca is not None
        bundle = await self._record(prepared.hub, prepared.device_id, target, issued, prepared.ca.kind)
        return issued, bundle

    async def _target(self, uow: UnitOfWork, hub: str, device_id: str) -> _Target:
        device = await uow.devices.get(hub, device_id)
        record = None
        if device is not None and device.registration_id:
            record = await uow.registrations.get(device.registration_id)
        if (
            device is None
            or record is None
            or record.status != "assigned"
            or (record.assigned_hub or "").lower() != hub.lower()
            or record.device_id != device_id
        ):
            raise HubCertificateRefused(
                404,
                NOT_PROVISIONED,
                "Device was not provisioned to this hub by the provisioning service",
                f"hub {hub}: device {device_id} has no assigned registration here, so no issuance policy",
            )
        if record.enrollment_group_id:
            group = await uow.groups.get(record.enrollment_group_id)
            enrollment, settings = f"group:{record.enrollment_group_id}", group.settings if group else None
        else:
            individual = await uow.enrollments.get(record.registration_id)
            enrollment = f"individual:{record.registration_id}"
            settings = individual.settings if individual else None
        if settings is None:
            refused = Refused(RefusalReason.NO_ENROLLMENT, f"enrollment {enrollment} no longer exists")
            raise _ToLog(record.registration_id, enrollment, refused)
        return _Target(record.registration_id, enrollment, settings)

    async def _record(
        self, hub: str, device_id: str, target: _Target, issued: IssuedChain, kind: str
    ) -> TrustBundle | None:
        now = self._clock.now()
        async with self._store.begin() as uow:
            device = await uow.devices.get(hub, device_id, for_update=True)
            if device is None:
                raise HubCertificateRefused(
                    404, NOT_PROVISIONED, "Device not found", f"hub {hub}: device {device_id} was deleted meanwhile"
                )
            policy = target.settings.issuance_policy
            keep = policy is not None and policy.keep_existing_credential
            await uow.devices.put(replace(device, auth=issuance.renewed_hub_auth(device.auth, issued, keep=keep)))
            await uow.issued_certificates.add(
                issuance.issued_record(issued, target.registration_id, device_id, target.enrollment, now, kind, "hub")
            )
            bundle = await uow.trust_bundles.get(target.settings.trust_bundle_id or BUILTIN_BUNDLE_ID)
            record = await uow.registrations.get(target.registration_id, for_update=True)
            if record is not None:
                # As a registration with a CSR records it (ProvisioningService._bundle_sent).
                await uow.registrations.put(
                    replace(
                        record,
                        issued_certificate=issued.sha256_thumbprint,
                        trust_bundle_id=bundle.bundle_id if bundle is not None else None,
                        trust_bundle_version=bundle.version if bundle is not None else None,
                    )
                )
        log.info(
            "hub %s: issued certificate %s to %s over the hub (CA %s)",
            hub,
            issued.serial_number,
            device_id,
            issued.issuer_name,
        )
        return bundle

    async def _refused(self, registration_id: str, enrollment: str, exc: Refused) -> HubCertificateRefused:
        """Log the refusal where operators look (`iotdps refusals`) and make the device's answer."""
        try:
            async with self._store.begin() as uow:
                await uow.refusals.add(
                    Refusal(registration_id, exc.reason.value, f"hub certificate request: {exc.message}", None,
                            self._clock.now(), enrollment)
                )  # fmt: skip
        except IotdpsError as failure:
            log.warning("refusal of %s not logged: %s", registration_id, failure.message)
        return HubCertificateRefused.of(exc)
