"""`AdminClient`: what the administration commands ask of a provisioning service.

Two implementations: cli.local (`LocalAdminClient`, over the store and the provisioning
services) and cli.remote (`RemoteAdminClient`, over the management API). The commands and the
workflows below are written once against this Protocol.

What is atomic, said once for both: every method is one unit of work on the service. Locally
it is one store transaction; remotely one HTTP request, except where a method says otherwise.
Read-modify-write across calls (get, change, put) is made safe by etags: `put_enrollment` and
`put_group` take `if_match`, and a record changed in between is refused (PreconditionFailed)
both ways. `update_hub` is the one read-modify-write inside a method: one transaction locally;
over the API a GET then a PUT (linked hubs carry no etag), so the last writer wins there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from iotdps.enrollment.models import EnrollmentGroup
from iotdps.errors import AlreadyExists
from iotdps.pki.encoding import load_certificate, sha256_thumbprint
from iotdps.ports import CaAdmin

if TYPE_CHECKING:
    from iotdps.allocation.hubs import LinkedHub
    from iotdps.audit import AuditEntry, AuditQuery
    from iotdps.enrollment.cas import CaCertificate
    from iotdps.enrollment.models import IndividualEnrollment
    from iotdps.ports import Refusal
    from iotdps.provisioning.record_view import RegistrationView
    from iotdps.provisioning.settings import ServiceSettings

__all__ = ["AdminClient", "ExplainRequest", "enroll_signing_group", "prove_possession", "register_ca"]


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """A device to explain: its certificate chain (PEM, leaf first), its symmetric key, or its
    TPM's endorsement key (base64)."""

    registration_id: str | None = None
    chain_pem: str | None = None
    symmetric_key: str | None = None
    endorsement_key: str | None = None


class AdminClient(CaAdmin, Protocol):
    """The provisioning service as the administration commands see it (see the module
    docstring for what each call may assume about atomicity). CA proof of possession
    (`upload_ca`, `generate_verification_code`, `verify_ca`) comes from `ports.CaAdmin`."""

    # CA certificates
    async def get_ca(self, name: str) -> CaCertificate | None: ...
    async def list_cas(self) -> list[CaCertificate]: ...
    async def delete_ca(self, name: str) -> None: ...

    # individual enrollments (`put_*` validates as the management API does: provisioning.admin)
    async def get_enrollment(self, registration_id: str) -> IndividualEnrollment | None: ...
    async def list_enrollments(self) -> list[IndividualEnrollment]: ...
    async def put_enrollment(
        self, enrollment: IndividualEnrollment, if_match: str | None = None
    ) -> IndividualEnrollment: ...
    async def delete_enrollment(self, registration_id: str) -> None: ...

    # enrollment groups
    async def get_group(self, group_id: str) -> EnrollmentGroup | None: ...
    async def list_groups(self) -> list[EnrollmentGroup]: ...
    async def put_group(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup: ...
    async def delete_group(self, group_id: str) -> None: ...

    # linked hubs; update_hub and remove_hub raise NotFound("hub H is not linked")
    async def list_hubs(self) -> list[LinkedHub]: ...
    async def put_hub(self, hub: LinkedHub) -> LinkedHub: ...
    async def update_hub(self, host_name: str, change: Callable[[LinkedHub], LinkedHub]) -> LinkedHub: ...
    async def remove_hub(self, host_name: str) -> None: ...

    # service settings
    async def get_settings(self) -> ServiceSettings | None: ...
    async def put_settings(self, settings: ServiceSettings) -> ServiceSettings: ...

    # registration records and refusals
    # records with what issuance gave the device (provisioning.record_view), as the API shows them
    async def get_registration(self, registration_id: str) -> RegistrationView | None: ...
    async def list_registrations(self, enrollment_group_id: str | None = None) -> list[RegistrationView]: ...
    async def delete_registration(self, registration_id: str) -> None: ...
    async def list_refusals(self, registration_id: str | None, limit: int) -> list[Refusal]: ...

    # the audit trail (iotdps.audit): one page of entries, ascending seq
    async def list_audit(self, query: AuditQuery) -> list[AuditEntry]: ...

    async def explain(self, request: ExplainRequest) -> list[str]:
        """The precedence walk and the decision for a device, in lines, without registering it."""
        ...


# --------------------------------------------------------------------------- workflows


async def prove_possession(client: AdminClient, name: str, ca_pem: str, sign: Callable[[str], str]) -> CaCertificate:
    """The whole proof of possession: upload the CA when it is missing or different, get a
    code, have `sign(code)` issue the verification certificate (PEM), verify. A CA already
    verified with the same certificate is left as it is."""
    wanted = sha256_thumbprint(load_certificate(ca_pem))
    current = await client.get_ca(name)
    if current is not None and current.sha256_thumbprint == wanted and current.is_verified:
        return current
    if current is None or current.sha256_thumbprint != wanted:
        current = await client.upload_ca(name, ca_pem, False)
    code, current = await client.generate_verification_code(name, current.etag)
    return await client.verify_ca(name, sign(code), current.etag)


async def register_ca(client: AdminClient, name: str, ca_pem: str) -> CaCertificate:
    """Upload a new CA unverified (proof of possession comes next). The same certificate
    already there is left as it is; another certificate under the name is refused, never
    replaced: devices may depend on the one there."""
    wanted = sha256_thumbprint(load_certificate(ca_pem))
    current = await client.get_ca(name)
    if current is not None:
        if current.sha256_thumbprint == wanted:
            return current
        raise AlreadyExists(
            f"the provisioning service already has another CA named {name!r}; not replacing it "
            "(create the root with --name, or --no-register)"
        )
    return await client.upload_ca(name, ca_pem, False)


async def enroll_signing_group(
    client: AdminClient, group_id: str, ca_pem: str, hubs: Sequence[str] = ()
) -> EnrollmentGroup:
    """Create an X.509 enrollment group whose signing certificate is `ca_pem` (refused if the
    group exists: an existing group is changed with `iotdps group update`)."""
    doc: dict[str, object] = {
        "enrollmentGroupId": group_id,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca_pem}}}},
    }
    if hubs:
        doc["iotHubs"] = list(hubs)
    group = EnrollmentGroup.from_json(doc)
    if await client.get_group(group_id) is not None:
        raise AlreadyExists(f"enrollment group {group_id} already exists")
    return await client.put_group(group)
