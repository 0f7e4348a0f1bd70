"""`LocalAdminClient`: the `AdminClient` (cli.client) over a store this process opened.

Each method is one store transaction, so a read-modify-write such as `update_hub` or "refuse
a hub that is not linked, else delete it" is atomic here. Every change goes through the core's
writers (provisioning.admin, config_admin, ca_admin), the same the management API calls, and
each appends its audit entry in its own transaction, naming `actor`: the user on this machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor, AuditEntry, AuditQuery
from iotdps.cli.actor import local_actor
from iotdps.cli.client import ExplainRequest
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.errors import InvalidInput, NotFound
from iotdps.ports import Page, Refusal, Store
from iotdps.provisioning import admin, config_admin
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.provisioning.record_view import RegistrationView, registration_view, registration_views
from iotdps.provisioning.settings import ServiceSettings

__all__ = ["LocalAdminClient", "all_pages"]

T = TypeVar("T")
_PAGE = 500
_MAX_PAGES = 100_000


async def all_pages(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a paged listing (bounded: at most 100,000 pages)."""
    out: list[T] = []
    token: str | None = None
    for _ in range(_MAX_PAGES):
        page = await fetch(token)
        out.extend(page.items)
        token = page.continuation
        if token is None:
            break
    return out


class LocalAdminClient:
    """Administration of the store `store` (which the caller opened and closes)."""

    def __init__(self, store: Store, actor: Actor | None = None) -> None:
        self.store = store
        self.actor = actor or local_actor()
        self._ca = CaAdminService(store, actor=self.actor)

    # ------------------------------------------------------------------ CA certificates

    async def upload_ca(
        self, name: str, pem: str, verified: bool = False, if_match: str | None = None
    ) -> CaCertificate:
        return await self._ca.upload_ca(name, pem, verified, if_match)

    async def generate_verification_code(self, name: str, if_match: str | None = None) -> tuple[str, CaCertificate]:
        return await self._ca.generate_verification_code(name, if_match)

    async def verify_ca(self, name: str, verification_cert_pem: str, if_match: str | None = None) -> CaCertificate:
        return await self._ca.verify_ca(name, verification_cert_pem, if_match)

    async def upload_crl(self, name: str, data: str, if_match: str | None = None) -> CaCertificate:
        return await self._ca.upload_crl(name, data, if_match)

    async def get_ca(self, name: str) -> CaCertificate | None:
        async with self.store.begin() as uow:
            return await uow.cas.get(name)

    async def list_cas(self) -> list[CaCertificate]:
        async with self.store.begin() as uow:
            return list(await uow.cas.list())

    async def delete_ca(self, name: str) -> None:
        await self._ca.delete_ca(name)

    # ------------------------------------------------------------------ enrollments and groups

    async def get_enrollment(self, registration_id: str) -> IndividualEnrollment | None:
        async with self.store.begin() as uow:
            return await uow.enrollments.get(registration_id)

    async def list_enrollments(self) -> list[IndividualEnrollment]:
        async with self.store.begin() as uow:
            return await all_pages(lambda token: uow.enrollments.list(_PAGE, token))

    async def put_enrollment(
        self, enrollment: IndividualEnrollment, if_match: str | None = None
    ) -> IndividualEnrollment:
        return await admin.put_enrollment(self.store, enrollment, if_match, actor=self.actor)

    async def delete_enrollment(self, registration_id: str) -> None:
        await admin.delete_enrollment(self.store, registration_id, actor=self.actor)

    async def get_group(self, group_id: str) -> EnrollmentGroup | None:
        async with self.store.begin() as uow:
            return await uow.groups.get(group_id)

    async def list_groups(self) -> list[EnrollmentGroup]:
        async with self.store.begin() as uow:
            return await all_pages(lambda token: uow.groups.list(_PAGE, token))

    async def put_group(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup:
        return await admin.put_group(self.store, group, if_match, actor=self.actor)

    async def delete_group(self, group_id: str) -> None:
        await admin.delete_group(self.store, group_id, actor=self.actor)

    # ------------------------------------------------------------------ linked hubs and settings

    async def list_hubs(self) -> list[LinkedHub]:
        async with self.store.begin() as uow:
            return list(await uow.hubs.list())

    async def put_hub(self, hub: LinkedHub) -> LinkedHub:
        # As the API does (config_admin.link_hub): the settings are the operator's, the lease the nodes'.
        return await config_admin.link_hub(self.store, hub, actor=self.actor)

    async def update_hub(self, host_name: str, change: Callable[[LinkedHub], LinkedHub]) -> LinkedHub:
        return await config_admin.update_hub(self.store, host_name, change, actor=self.actor)

    async def remove_hub(self, host_name: str) -> None:
        await config_admin.unlink_hub(self.store, host_name, actor=self.actor)

    async def get_settings(self) -> ServiceSettings | None:
        async with self.store.begin() as uow:
            return await uow.settings.get()

    async def put_settings(self, settings: ServiceSettings) -> ServiceSettings:
        return await config_admin.put_settings(self.store, settings, actor=self.actor)

    # ------------------------------------------------------------------ registrations, refusals

    async def get_registration(self, registration_id: str) -> RegistrationView | None:
        async with self.store.begin() as uow:
            record = await uow.registrations.get(registration_id)
            return await registration_view(uow, record) if record is not None else None

    async def list_registrations(self, enrollment_group_id: str | None = None) -> list[RegistrationView]:
        async with self.store.begin() as uow:
            records = await all_pages(
                lambda token: uow.registrations.list(_PAGE, token, enrollment_group_id=enrollment_group_id)
            )
            return await registration_views(uow, records)

    async def delete_registration(self, registration_id: str) -> None:
        await admin.delete_registration(self.store, registration_id, actor=self.actor)

    async def list_refusals(self, registration_id: str | None, limit: int) -> list[Refusal]:
        async with self.store.begin() as uow:
            return list(await uow.refusals.list(registration_id, limit))

    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        async with self.store.read() as uow:
            return list(await uow.audit.list(query))

    # ------------------------------------------------------------------ explain

    async def explain(self, request: ExplainRequest) -> list[str]:
        # The registration machinery is imported for this command alone: the other
        # administration commands start without it (cli.main's light start).
        from iotdps.attestation.x509 import evidence_from_chain
        from iotdps.evidence import SasCredential
        from iotdps.pki import certs
        from iotdps.pki.encoding import load_certificates
        from iotdps.provisioning.explain import explain_registration
        from iotdps.provisioning.service import ProvisioningService
        from iotdps.provisioning.trust import trust_anchors
        from iotdps.sas import make_sas_token
        from iotdps.secret import Secret

        service = ProvisioningService(self.store)
        if request.chain_pem is not None:
            chain = load_certificates(request.chain_pem)
            rid = request.registration_id or certs.common_name(chain[0]) or ""
            evidence = evidence_from_chain(chain, await trust_anchors(self.store), service.clock.now())
            lines = [f"registration id: {rid}"]
            if evidence.verified is None:
                lines.append(f"chain: not trusted by the TLS layer ({'; '.join(evidence.errors)})")
            else:
                lines.append("chain: " + " -> ".join(certs.describe(c) for c in evidence.verified))
            return lines + await explain_registration(service, rid, evidence)
        registration_id, key = request.registration_id, request.symmetric_key
        if request.endorsement_key is not None:
            from iotdps.evidence import TpmEvidence

            if not registration_id:
                raise InvalidInput("--endorsement-key needs --registration-id")
            tpm = TpmEvidence(request.endorsement_key)
            return [f"registration id: {registration_id}", *await explain_registration(service, registration_id, tpm)]
        if not registration_id or not key:
            raise InvalidInput("--symmetric-key needs --registration-id")
        settings = await self.get_settings()
        if settings is None:
            raise NotFound("no service settings yet; run `iotdps settings set --id-scope ...`")
        expiry = int(service.clock.now().timestamp()) + 300
        try:
            token = make_sas_token(settings.id_scope, registration_id, key, expiry)
        except ValueError as exc:
            raise InvalidInput("--symmetric-key is not base64") from exc
        return [
            f"registration id: {registration_id}",
            *await explain_registration(service, registration_id, SasCredential(Secret(token))),
        ]
