"""Certificate issuance inside the register pipeline (issue 18).

Where it sits (architecture.md: "authorization returns a plan"):
1. After attestation admitted the device and before anything is written, `vet` decides
   whether this registration issues: no policy and a CSR -> CSR_NOT_EXPECTED; policy
   `required` and no CSR -> CSR_REQUIRED; else `csr_policy.vet_csr` with the policy's key
   types (each CsrRefusal its own reason). These refuse the request itself: nothing is written.
2. In the assigning phase, outside any transaction (it is a network call, like the custom
   allocation webhook): `issue` asks the policy's issuing CA. A failure is a refusal whose
   record ends `failed` (ISSUANCE_CA_* / ISSUING_CA_UNKNOWN); an unreachable CA is retryable.
3. In the write transaction: the hub identity authenticates by the issued leaf's thumbprints,
   and by the device's attestation credential too only when the policy's
   `keepExistingCredential` says so (`hub_auth`), the certificate is recorded, and the
   registration record keeps the trust bundle version the answer carries and the issued
   certificate's thumbprint.

The answer's extra registrationState fields are rendered per api-version by
`pki.issuance_wire.issuance_state_fields`, from what the record points at (`state_fields`), so
a poll gets the same fields as a direct answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from iotdps.enrollment.models import EnrollmentSettings
from iotdps.errors import ConfigError, InvalidInput
from iotdps.hub.devices import DeviceAuth
from iotdps.issuance.models import IssuedCertificate, IssuingCa
from iotdps.pki.csr_policy import AcceptedCsr, CsrRefused, CsrRequirement, IssuancePolicy, vet_csr
from iotdps.pki.encoding import load_certificates
from iotdps.pki.issuance_wire import csr_field, issuance_state_fields
from iotdps.pki.issuing.base import CertificateIssuer, IssuanceError, IssuedChain
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.ports import UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.refusals import RefusalReason, Refused

__all__ = [
    "IssuerSource",
    "PendingIssuance",
    "hub_auth",
    "issue",
    "issued_record",
    "renewed_hub_auth",
    "state_fields",
    "vet",
]


class IssuerSource(Protocol):
    """Working issuers for stored issuing CA objects (issuance.issuers.IssuerCache)."""

    async def issuer(self, ca: IssuingCa) -> CertificateIssuer: ...


@dataclass(frozen=True, slots=True)
class PendingIssuance:
    """A vetted CSR and the policy that will sign it."""

    csr: AcceptedCsr
    policy: IssuancePolicy


def vet(settings: EnrollmentSettings, registration_id: str, csr: str | None) -> PendingIssuance | None:
    """Whether (and what) this registration issues; Refused for a CSR problem (see module doc)."""
    policy = settings.issuance_policy
    if policy is None:
        if csr is not None:
            raise Refused(
                RefusalReason.CSR_NOT_EXPECTED, "the device sent a CSR but its enrollment has no issuance policy"
            )
        return None
    if csr is None:
        if policy.csr_requirement is CsrRequirement.REQUIRED:
            raise Refused(
                RefusalReason.CSR_REQUIRED,
                f"the enrollment's issuance policy (CA {policy.certificate_authority_name!r}) requires a CSR "
                "(api-version 2025-07-01-preview `csr` or 2021-11-01-preview `clientCertificateCsr`)",
            )
        return None
    try:
        accepted = vet_csr(csr, registration_id, policy.accepted_key_types)
    except CsrRefused as exc:
        raise Refused(RefusalReason(exc.reason.value), exc.message) from None
    return PendingIssuance(accepted, policy)


async def issue(ca: IssuingCa | None, issuers: IssuerSource | None, pending: PendingIssuance) -> IssuedChain:
    """Ask the policy's issuing CA `ca` (as read from the store; outside any transaction: this
    is a network call); Refused when none issues."""
    name = pending.policy.certificate_authority_name
    if ca is None:
        raise Refused(
            RefusalReason.ISSUING_CA_UNKNOWN, f"the issuance policy names issuing CA {name!r}, which does not exist"
        )
    if issuers is None:
        raise Refused(RefusalReason.ISSUING_CA_UNKNOWN, "this server has no sealing key, so it cannot use issuing CAs")
    try:
        issuer = await issuers.issuer(ca)
        return await issuer.issue(pending.csr, pending.policy.profile)
    except IssuanceError as exc:
        raise Refused(RefusalReason("ISSUANCE_" + exc.reason.value), exc.message) from None
    except (ConfigError, InvalidInput) as exc:
        # The stored object cannot be used (its secret does not open, its key does not load).
        raise Refused(RefusalReason.ISSUANCE_CA_REFUSED, f"issuing CA {name!r} is unusable: {exc.message}") from None


def hub_auth(issued: IssuedChain, attested: DeviceAuth, *, keep: bool) -> DeviceAuth:
    """The hub identity of a device with an issued certificate: that certificate by thumbprint,
    plus the credential it attested with (`attested`: its SAS keys, its own certificate's
    thumbprints, a TPM's hub key) only when the policy keeps it (`keep`:
    `IssuancePolicy.keep_existing_credential`). Without it the identity is
    `selfSigned` with no thumbprint of its own: the issued certificate alone opens the hub, and
    a device whose policy stopped keeping its credential loses it at this registration."""
    base = attested if keep else DeviceAuth("selfSigned")
    return base.with_issued(issued.sha256_thumbprint, issued.sha1_thumbprint)


def renewed_hub_auth(current: DeviceAuth, issued: IssuedChain, *, keep: bool) -> DeviceAuth:
    """The hub identity after a renewal over the hub (provisioning.hub_certificates): the new
    certificate's thumbprints first, then the previous issued certificate's, so the device
    reconnects with the new one without a gap (and a connection made with the old one is not
    cut); any older one is dropped. The kept credential is never touched (`with_issued`). A
    device that had no issued certificate yet (an optional-CSR policy) gets its first one as at
    registration: `hub_auth`, keeping its own credential only if the policy says `keep`."""
    if not current.issued_thumbprints:
        return hub_auth(issued, current, keep=keep)
    return current.with_issued(issued.sha256_thumbprint, issued.sha1_thumbprint, *current.issued_thumbprints[:2])


def issued_record(
    issued: IssuedChain,
    registration_id: str,
    device_id: str,
    enrollment: str,
    issued_at: datetime,
    kind: str,
    via: str = "dps",
) -> IssuedCertificate:
    return IssuedCertificate(
        sha256_thumbprint=issued.sha256_thumbprint,
        sha1_thumbprint=issued.sha1_thumbprint,
        serial_number=issued.serial_number,
        registration_id=registration_id,
        device_id=device_id,
        issuer_name=issued.issuer_name,
        issuer_kind=kind,
        not_before=issued.not_before,
        not_after=issued.not_after,
        issued_at=issued_at,
        enrollment=enrollment,
        pem=issued.chain_pem().decode("ascii"),  # the whole chain, so a poll can answer it again
        issued_via=via,
    )


def _chain_of(record: IssuedCertificate) -> IssuedChain | None:
    certs = load_certificates(record.pem)
    if len(certs) < 2:
        return None
    return IssuedChain(certs[0], tuple(certs[1:-1]), certs[-1], record.issuer_name)


async def state_fields(uow: UnitOfWork, record: RegistrationRecord, api_version: str | None) -> Mapping[str, Any]:
    """The registrationState fields issuance adds for this api-version (none for the others)."""
    if api_version is None or csr_field(api_version) is None or record.status != "assigned":
        return {}
    issued: IssuedChain | None = None
    if record.issued_certificate:
        stored = await uow.issued_certificates.get(record.issued_certificate)
        issued = _chain_of(stored) if stored is not None else None
    bundle: TrustBundle | None = None
    if record.trust_bundle_id:
        bundle = await uow.trust_bundles.get(record.trust_bundle_id)
    return issuance_state_fields(api_version, issued, bundle)
