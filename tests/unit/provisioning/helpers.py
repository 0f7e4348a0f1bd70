"""Builders of enrollments, groups and a ready service for the pipeline tests."""

from __future__ import annotations

from typing import Any

from certkit import NOW, FixedClock, Issued, tls_evidence

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor
from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
    SymmetricKeyAttestation,
    X509Attestation,
)
from iotdps.evidence import SasCredential
from iotdps.ports import Store, WebhookTransport
from iotdps.provisioning.admin import put_enrollment, put_group
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.provisioning.registration import RegistrationOutcome, RegistrationRequest
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.sas import make_sas_token
from iotdps.secret import Secret
from iotdps.store import MemoryStore

TEST_ACTOR = Actor("local", "test")

SCOPE = "0ne00TEST01"
HUBS = ("hub-a.local", "hub-b.local", "hub-c.local")
KEY1 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes
KEY2 = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="


def x509_enrollment(rid: str, leaf: Issued, **settings: Any) -> IndividualEnrollment:
    att = Attestation("x509", x509=X509Attestation(client_certificates=(CertificateSlot(leaf.pem), None)))
    return IndividualEnrollment(rid, att, EnrollmentSettings(**settings))


def ca_group(gid: str, *, ca_ref: str | None = None, signing: Issued | None = None, **settings: Any) -> EnrollmentGroup:
    x = X509Attestation(
        signing_certificates=(CertificateSlot(signing.pem) if signing else None, None),
        ca_references=(ca_ref, None),
    )
    return EnrollmentGroup(gid, Attestation("x509", x509=x), EnrollmentSettings(**settings))


def sk_enrollment(rid: str, primary: str = KEY1, secondary: str = KEY2, **settings: Any) -> IndividualEnrollment:
    att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(primary), Secret(secondary)))
    return IndividualEnrollment(rid, att, EnrollmentSettings(**settings))


def sk_group(gid: str, primary: str = KEY1, secondary: str = KEY2, **settings: Any) -> EnrollmentGroup:
    att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(primary), Secret(secondary)))
    return EnrollmentGroup(gid, att, EnrollmentSettings(**settings))


class Env:
    """A MemoryStore-backed service with three linked hubs and a fixed clock."""

    def __init__(
        self, webhook: WebhookTransport | None = None, hubs: tuple[str, ...] = HUBS, store: Store | None = None
    ) -> None:
        self.clock = FixedClock()
        self.store: Store = store or MemoryStore(clock=self.clock)
        self.service = ProvisioningService(self.store, self.clock, webhook)
        self.cas = CaAdminService(self.store, self.clock, actor=TEST_ACTOR)
        self._hubs = hubs

    async def setup(self) -> Env:
        async with self.store.begin() as uow:
            await uow.settings.put(ServiceSettings(SCOPE))
            for name in self._hubs:
                await uow.hubs.put(LinkedHub(name))
        return self

    async def enroll(self, enrollment: IndividualEnrollment) -> None:
        await put_enrollment(self.store, enrollment, actor=TEST_ACTOR)

    async def group(self, group: EnrollmentGroup) -> None:
        await put_group(self.store, group, actor=TEST_ACTOR)

    async def register_x509(self, rid: str, chain: list[Any], **kw: Any) -> RegistrationOutcome:
        evidence = await tls_evidence(self.store, chain, self.clock.now())
        return await self.service.register(RegistrationRequest(SCOPE, rid, evidence, **kw))

    async def register_sas(self, rid: str, key: str, *, expiry: int | None = None, **kw: Any) -> RegistrationOutcome:
        se = expiry if expiry is not None else int(NOW.timestamp()) + 3600
        token = make_sas_token(SCOPE, rid, key, se)
        return await self.service.register(RegistrationRequest(SCOPE, rid, SasCredential(Secret(token)), **kw))

    async def refusals(self, rid: str | None = None) -> list[Any]:
        async with self.store.begin() as uow:
            return list(await uow.refusals.list(rid))
