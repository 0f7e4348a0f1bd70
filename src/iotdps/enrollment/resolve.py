"""Enrollment precedence: which enrollment decides for a device, as pure functions.

The callers fetch the candidates (the individual enrollment for the registration id, the groups
on each CA certificate of the chain, the symmetric-key groups); these functions only decide,
and record every step in words so that `iotdps explain` and the refusal log can show operators
why. Rules (seed 004, azure-wire-protocol.md 1.3, 1.4):

- An individual enrollment for the registration id decides whenever it exists: a wrong
  certificate or key refuses, it is never "skipped" to reach a group.
- X.509 groups are tried from the CA nearest the device up to the root; the first CA that has
  a group decides. A disabled match refuses, with no fallback to a higher group: that is what
  lets an operator revoke one factory under an enabled root group.
- Symmetric-key groups are tried in a stable order (group id); the first whose derived key
  verifies the signature decides, enabled or not. A group whose key does not verify has not
  matched, so it cannot block.
- Several groups on one CA (by signing certificate and by caReference): the first by group id
  decides; the others are named in the explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from iotdps.enrollment.models import CertificateSlot, EnrollmentGroup, IndividualEnrollment
from iotdps.errors import InvalidInput
from iotdps.pki.encoding import load_certificate, sha256_thumbprint
from iotdps.refusals import RefusalReason
from iotdps.sas import SasToken, derive_device_key, signature_matches

__all__ = [
    "CaStep",
    "Decision",
    "resolve_symmetric_key",
    "resolve_x509",
    "slot_thumbprint",
]

KeySlot = Literal["primary", "secondary"]


@dataclass(frozen=True, slots=True)
class CaStep:
    """One CA certificate of the device's chain (nearest first) and the groups on it."""

    label: str  # e.g. "CN=factory-a (sha256 1A2B...)"
    sha256_thumbprint: str
    groups: Sequence[EnrollmentGroup] = ()
    uploaded_name: str | None = None
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of precedence. `individual`/`group` name the enrollment that decided (set on
    refusals too when one matched: a disabled enrollment gets a registration record)."""

    admitted: bool
    individual: IndividualEnrollment | None = None
    group: EnrollmentGroup | None = None
    reason: RefusalReason | None = None
    message: str = ""
    steps: tuple[str, ...] = field(default=())
    key_slot: KeySlot | None = None

    @property
    def matched(self) -> bool:
        """An enrollment recognised the device (admitted, or refused as disabled)."""
        return self.individual is not None or self.group is not None

    @property
    def enrollment_name(self) -> str | None:
        if self.individual is not None:
            return f"individual:{self.individual.registration_id}"
        if self.group is not None:
            return f"group:{self.group.enrollment_group_id}"
        return None

    def explain(self) -> list[str]:
        verdict = "admit" if self.admitted else f"refuse {self.reason}: {self.message}"
        return [*self.steps, f"decision: {verdict}"]


def slot_thumbprint(slot: CertificateSlot | None) -> str | None:
    """SHA-256 of a certificate slot: from the stored info, else computed from the certificate."""
    if slot is None:
        return None
    if slot.sha256_thumbprint:
        return slot.sha256_thumbprint
    try:
        return sha256_thumbprint(load_certificate(slot.certificate))
    except InvalidInput:
        return None


def _refuse(
    steps: list[str],
    reason: RefusalReason,
    message: str,
    *,
    individual: IndividualEnrollment | None = None,
    group: EnrollmentGroup | None = None,
) -> Decision:
    return Decision(False, individual, group, reason, message, tuple(steps))


def _individual_matched(
    steps: list[str], name: str, individual: IndividualEnrollment, slot: KeySlot, how: str
) -> Decision:
    """The last step for an individual enrollment whose credential matched (`how`, in words):
    admit, unless it is disabled; a disabled individual blocks, no group is consulted after it."""
    if not individual.enabled:
        steps.append(f"{name}: found, {slot} {how}, disabled -> refuse")
        return _refuse(steps, RefusalReason.ENROLLMENT_DISABLED, f"{name} is disabled", individual=individual)
    steps.append(f"{name}: found, {slot} {how}, enabled -> admit")
    return Decision(True, individual, None, None, "", tuple(steps), slot)


def resolve_x509(
    registration_id: str,
    leaf_sha256: str,
    individual: IndividualEnrollment | None,
    ca_steps: Sequence[CaStep],
    *,
    reaches_verified_ca: bool,
) -> Decision:
    """Precedence for a device whose chain the TLS layer (or `evidence_from_chain`) verified.

    `ca_steps`: the CA certificates of the chain, nearest first, up to the root (extended above
    the TLS anchor). `reaches_verified_ca`: whether one of them is a verified uploaded CA; a group
    admits only then (an enrolled device certificate as TLS anchor vouches for itself only).
    """
    steps: list[str] = []
    leaf = leaf_sha256.upper()
    if individual is not None:
        name = f"individual enrollment {registration_id}"
        if individual.attestation.type != "x509" or individual.attestation.x509 is None:
            steps.append(f"{name}: found, attestation {individual.attestation.type}, not x509")
            return _refuse(
                steps,
                RefusalReason.ATTESTATION_MISMATCH,
                f"{name} uses {individual.attestation.type} attestation, the device presented an X.509 certificate",
                individual=individual,
            )
        primary, secondary = individual.attestation.x509.client_certificates
        slot: KeySlot | None = None
        if slot_thumbprint(primary) == leaf:
            slot = "primary"
        elif slot_thumbprint(secondary) == leaf:
            slot = "secondary"
        if slot is None:
            steps.append(
                f"{name}: found, device certificate sha256 {leaf[:16]}... is neither its primary nor secondary"
            )
            return _refuse(
                steps,
                RefusalReason.INDIVIDUAL_CERT_MISMATCH,
                f"device certificate sha256 {leaf[:16]}... is not the certificate of {name}",
                individual=individual,
            )
        return _individual_matched(steps, name, individual, slot, "certificate matches")

    steps.append(f"individual enrollment {registration_id}: not found")
    for step in ca_steps:
        uploaded = ""
        if step.uploaded_name is not None:
            uploaded = f" [uploaded as {step.uploaded_name}, {'verified' if step.verified else 'not verified'}]"
        if not step.groups:
            steps.append(f"group on {step.label}{uploaded}: none")
            continue
        ordered = sorted(step.groups, key=lambda g: g.enrollment_group_id)
        group = ordered[0]
        others = ""
        if len(ordered) > 1:
            others = f" (also on this CA, not consulted: {', '.join(g.enrollment_group_id for g in ordered[1:])})"
        if not group.enabled:
            steps.append(f"group on {step.label}{uploaded}: {group.enrollment_group_id}, disabled -> refuse{others}")
            return _refuse(
                steps, RefusalReason.GROUP_DISABLED, f"group {group.enrollment_group_id} is disabled", group=group
            )
        if not reaches_verified_ca:
            steps.append(
                f"group on {step.label}{uploaded}: {group.enrollment_group_id}, enabled, but the chain reaches"
                " no verified CA -> refuse"
            )
            return _refuse(
                steps,
                RefusalReason.CA_NOT_VERIFIED,
                f"the chain of {registration_id} reaches no verified CA (group {group.enrollment_group_id})",
            )
        steps.append(f"group on {step.label}{uploaded}: {group.enrollment_group_id}, enabled -> admit{others}")
        return Decision(True, None, group, None, "", tuple(steps))
    labels = ", ".join(s.label for s in ca_steps) or "none"
    return _refuse(
        steps,
        RefusalReason.NO_ENROLLMENT,
        f"no individual enrollment {registration_id} and no enrollment group on any CA of its chain ({labels})",
    )


def _which_key(token: SasToken, keys: tuple[str, str]) -> KeySlot | None:
    # Both keys are always computed so the time taken does not tell which one matched.
    primary = signature_matches(token, keys[0])
    secondary = signature_matches(token, keys[1])
    return "primary" if primary else "secondary" if secondary else None


def resolve_symmetric_key(
    registration_id: str,
    token: SasToken,
    individual: IndividualEnrollment | None,
    groups: Sequence[EnrollmentGroup],
) -> Decision:
    """Precedence for a device that sent a SAS token already checked for form, resource and
    expiry. `groups`: every symmetric-key group, enabled or not."""
    steps: list[str] = []
    if individual is not None:
        name = f"individual enrollment {registration_id}"
        sym = individual.attestation.symmetric_key
        if individual.attestation.type != "symmetricKey" or sym is None:
            steps.append(f"{name}: found, attestation {individual.attestation.type}, not symmetricKey")
            return _refuse(
                steps,
                RefusalReason.ATTESTATION_MISMATCH,
                f"{name} uses {individual.attestation.type} attestation, the device sent a SAS token",
                individual=individual,
            )
        slot = _which_key(token, sym.keys())
        if slot is None:
            steps.append(f"{name}: found, neither its primary nor secondary key verifies the signature")
            return _refuse(
                steps,
                RefusalReason.SAS_BAD_SIGNATURE,
                f"SAS signature does not verify with the keys of {name}",
                individual=individual,
            )
        return _individual_matched(steps, name, individual, slot, "key verifies")

    steps.append(f"individual enrollment {registration_id}: not found")
    for group in sorted(groups, key=lambda g: g.enrollment_group_id):
        sym = group.attestation.symmetric_key
        if group.attestation.type != "symmetricKey" or sym is None:
            continue
        derived = (derive_device_key(sym.keys()[0], registration_id), derive_device_key(sym.keys()[1], registration_id))
        slot = _which_key(token, derived)
        if slot is None:
            steps.append(f"symmetric-key group {group.enrollment_group_id}: derived keys do not verify")
            continue
        if not group.enabled:
            steps.append(
                f"symmetric-key group {group.enrollment_group_id}: derived {slot} key verifies, disabled -> refuse"
            )
            return _refuse(
                steps, RefusalReason.GROUP_DISABLED, f"group {group.enrollment_group_id} is disabled", group=group
            )
        steps.append(f"symmetric-key group {group.enrollment_group_id}: derived {slot} key verifies, enabled -> admit")
        return Decision(True, None, group, None, "", tuple(steps), slot)
    return _refuse(
        steps,
        RefusalReason.NO_ENROLLMENT,
        f"no individual enrollment {registration_id} and no symmetric-key group whose derived key verifies"
        " the signature",
    )
