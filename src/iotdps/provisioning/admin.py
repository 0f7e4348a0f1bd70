"""Writing enrollments and groups the way the service API does: fill what the service fills.

The service computes each certificate slot's `info` (thumbprints, names, validity) from the
certificate itself, never trusting a client's `info`; checks that an individual X.509
enrollment's certificate names the registration id (its CN must be the registration id, or
the device could never register); and that a group's caReferences name uploaded CAs.
The CLI and the management API (and the console through it) all call these, and each write
appends its audit entry (iotdps.audit) in the same transaction, naming the `actor` the edge
passed down.

Every certificate slot holds exactly one certificate, as on Azure (clientCertificates and
signingCertificates are `{primary, secondary}`, each one certificate; Azure refuses a chain
file there). It matters beyond the shape: an individual enrollment's certificate is a TLS
trust anchor, so a bundle (leaf + intermediates, as a device's certificate file holds) would
make its intermediate an anchor and stop every chain through it short of the verified root,
refusing the whole production line. For the same reason an individual enrollment takes a
device (end-entity) certificate, never a CA certificate: no enrollment may change another
device's outcome.
"""

from __future__ import annotations

from dataclasses import replace

from iotdps.attestation.tpm_crypto import KeyRole, TpmKeyError, parse_tpm_key_b64
from iotdps.audit import Actor, record
from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    EnrollmentGroup,
    IndividualEnrollment,
    TpmAttestation,
    X509Attestation,
)
from iotdps.errors import InvalidInput, NotFound
from iotdps.ids import same_registration_id
from iotdps.pki import certs
from iotdps.pki.encoding import certificate_info, load_certificate, load_certificates
from iotdps.ports import Store

__all__ = [
    "check_tpm_keys",
    "delete_enrollment",
    "delete_group",
    "delete_registration",
    "fill_certificate_info",
    "put_enrollment",
    "put_group",
]


def _slot(slot: CertificateSlot | None, where: str) -> CertificateSlot | None:
    if slot is None:
        return None
    try:
        found = load_certificates(slot.certificate)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from exc
    if len(found) != 1:
        raise InvalidInput(
            f"{where} holds {len(found)} certificates; an enrollment's certificate is exactly one certificate,"
            " not a chain (for a device certificate file that also holds its CA certificates, send only the"
            " first one, the device's own)"
        )
    return CertificateSlot(slot.certificate, dict(certificate_info(found[0])))


def fill_certificate_info(attestation: Attestation) -> Attestation:
    x = attestation.x509
    if x is None:
        return attestation
    filled = X509Attestation(
        client_certificates=(
            _slot(x.client_certificates[0], "clientCertificates.primary"),
            _slot(x.client_certificates[1], "clientCertificates.secondary"),
        ),
        signing_certificates=(
            _slot(x.signing_certificates[0], "signingCertificates.primary"),
            _slot(x.signing_certificates[1], "signingCertificates.secondary"),
        ),
        ca_references=x.ca_references,
    )
    return replace(attestation, x509=filled)


def check_tpm_keys(tpm: TpmAttestation) -> None:
    """Refuse keys that could never pass the challenge: the blob is built for an RSA-2048 EK with
    the TCG attributes and an RSA-2048 storage key (azure-wire-protocol.md 3.1)."""
    for name, value, role in (
        ("endorsementKey", tpm.endorsement_key, KeyRole.EK),
        ("storageRootKey", tpm.storage_root_key, KeyRole.SRK),
    ):
        if value is not None:
            try:
                parse_tpm_key_b64(value, role)
            except TpmKeyError as exc:
                raise InvalidInput(f"attestation.tpm.{name}: {exc}") from exc


async def put_enrollment(
    store: Store, enrollment: IndividualEnrollment, if_match: str | None = None, *, actor: Actor
) -> IndividualEnrollment:
    attestation = fill_certificate_info(enrollment.attestation)
    if attestation.tpm is not None:
        check_tpm_keys(attestation.tpm)
    if attestation.x509 is not None:
        for which, slot in zip(("primary", "secondary"), attestation.x509.client_certificates, strict=True):
            if slot is None:
                continue
            cert = load_certificate(slot.certificate)
            if certs.is_ca(cert):
                raise InvalidInput(
                    f"clientCertificates.{which} ({certs.describe(cert)}) is a CA certificate (basicConstraints"
                    " CA:TRUE); an individual enrollment takes the device's own certificate (enroll a CA with an"
                    " enrollment group)"
                )
            cn = certs.common_name(cert)
            if cn is None or not same_registration_id(cn, enrollment.registration_id):
                raise InvalidInput(
                    f"certificate CN {cn!r} is not the registration id {enrollment.registration_id!r};"
                    " a device registers with its certificate's CN"
                )
    async with store.begin() as uow:
        before = await uow.enrollments.get(enrollment.registration_id)
        saved = await uow.enrollments.put(replace(enrollment, attestation=attestation), if_match)
        action = "enrollment.update" if before is not None else "enrollment.create"
        await record(uow, actor, action, f"enrollment/{saved.registration_id}", before=before, after=saved)
        return saved


async def put_group(
    store: Store, group: EnrollmentGroup, if_match: str | None = None, *, actor: Actor
) -> EnrollmentGroup:
    attestation = fill_certificate_info(group.attestation)
    async with store.begin() as uow:
        if attestation.x509 is not None:
            for ref in attestation.x509.ca_references:
                if ref is not None and await uow.cas.get(ref) is None:
                    raise InvalidInput(f"caReference {ref!r} names no uploaded CA certificate")
        before = await uow.groups.get(group.enrollment_group_id)
        saved = await uow.groups.put(replace(group, attestation=attestation), if_match)
        action = "group.update" if before is not None else "group.create"
        await record(uow, actor, action, f"group/{saved.enrollment_group_id}", before=before, after=saved)
        return saved


async def delete_enrollment(
    store: Store, registration_id: str, if_match: str | None = None, *, actor: Actor
) -> IndividualEnrollment:
    """Delete an individual enrollment; returns what was deleted (NotFound when nothing was)."""
    async with store.begin() as uow:
        before = await uow.enrollments.get(registration_id)
        if before is None:
            raise NotFound(f"enrollment {registration_id} not found")
        await uow.enrollments.delete(registration_id, if_match)
        await record(uow, actor, "enrollment.delete", f"enrollment/{before.registration_id}", before=before)
        return before


async def delete_group(store: Store, group_id: str, if_match: str | None = None, *, actor: Actor) -> EnrollmentGroup:
    """Delete an enrollment group; returns what was deleted (NotFound when nothing was)."""
    async with store.begin() as uow:
        before = await uow.groups.get(group_id)
        if before is None:
            raise NotFound(f"enrollment group {group_id} not found")
        await uow.groups.delete(group_id, if_match)
        await record(uow, actor, "group.delete", f"group/{before.enrollment_group_id}", before=before)
        return before


async def delete_registration(store: Store, registration_id: str, if_match: str | None = None, *, actor: Actor) -> None:
    """Delete a registration record: the device's next registration is an initial assignment."""
    async with store.begin() as uow:
        before = await uow.registrations.get(registration_id)
        await uow.registrations.delete(registration_id, if_match)  # NotFound / PreconditionFailed
        await record(uow, actor, "registration.delete", f"registration/{registration_id}", before=before)
