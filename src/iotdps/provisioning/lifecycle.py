"""How a registration record's status moves: the one table of the registration lifecycle, and
the records of the non-terminal and refused states.

Why a registration was refused and what the device is told live on the floor
(`iotdps.refusals`); this module says which status may follow which.
"""

from __future__ import annotations

from iotdps.enrollment.models import AttestationType
from iotdps.provisioning.records import RegistrationRecord, RegistrationStatus
from iotdps.refusals import REVOKED_RECORD, DeviceAnswer, RefusalReason, device_answer

__all__ = ["TERMINAL_STATUSES", "TRANSITIONS", "assigning_record", "check_transition", "refused_record"]

# A registration record's status moves only along these edges. Rules:
# - A register operation starts from any state (or from no record): it may first write
#   `assigning` (custom allocation writes it before calling the webhook, so a poll sees the
#   operation) and then ends in exactly one terminal state.
# - `assigning` is never left except by its own operation's terminal write, or by a newer
#   operation (a device may re-register while a webhook is slow; the newest wins).
# - Terminal states (`assigned`, `failed`, `disabled`) are left only by a new operation
#   (a new operation id); within one operation they are final.
# - `unassigned` is Azure's name for "no registration yet"; we never write it.

TERMINAL_STATUSES: frozenset[str] = frozenset({"assigned", "failed", "disabled"})

# (from, to) within one operation; `None` = no record (or a record of an older operation).
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"assigning", "assigned", "failed", "disabled"}),
    "assigning": frozenset({"assigned", "failed", "disabled"}),
    "assigned": frozenset(),
    "failed": frozenset(),
    "disabled": frozenset(),
}


def check_transition(old: RegistrationStatus | None, new: RegistrationStatus, *, same_operation: bool) -> None:
    """Raise ValueError for a write the table does not allow (a bug, never a device's fault)."""
    start: str | None = old if same_operation else None
    if start not in TRANSITIONS or new not in TRANSITIONS[start]:
        raise ValueError(f"registration status may not move from {old!r} to {new!r} within one operation")


def assigning_record(
    registration_id: str,
    operation_id: str,
    current: RegistrationRecord | None,
    attestation_type: AttestationType,
    group_id: str | None,
    leaf_sha256: str | None,
    x509_path: tuple[str, ...] = (),
) -> RegistrationRecord:
    """The record a custom allocation writes before calling its webhook, so that a poll sees the
    operation; the previous hub and device id stay on it until the terminal write."""
    return RegistrationRecord(
        registration_id=registration_id,
        status="assigning",
        operation_id=operation_id,
        substatus=current.substatus if current else None,
        assigned_hub=current.assigned_hub if current else None,
        device_id=current.device_id if current else None,
        attestation_type=attestation_type,
        enrollment_group_id=group_id,
        x509_thumbprint=leaf_sha256,
        x509_path=_path(x509_path, current, leaf_sha256),
        # What the device still holds: the last bundle and certificate it was given.
        trust_bundle_id=current.trust_bundle_id if current else None,
        trust_bundle_version=current.trust_bundle_version if current else None,
        issued_certificate=current.issued_certificate if current else None,
    )


def _path(given: tuple[str, ...], current: RegistrationRecord | None, leaf_sha256: str | None) -> tuple[str, ...]:
    """The admitted path to keep on a record: the one given, else the current record's while the
    leaf is the same (so that a later revocation still shows on it)."""
    if given:
        return given
    if current is not None and leaf_sha256 is not None and current.x509_thumbprint == leaf_sha256:
        return current.x509_path
    return ()


def refused_record(
    registration_id: str,
    operation_id: str,
    current: RegistrationRecord | None,
    reason: RefusalReason,
    attestation_type: AttestationType | None,
    group_id: str | None,
    leaf_sha256: str | None,
    x509_path: tuple[str, ...] = (),
) -> RegistrationRecord:
    """The record of an operation refused after an enrollment matched (disabled, no hub...): the
    device-facing status, code and message; the previous hub and device id stay on it so that a
    later registration migrates correctly."""
    answer = device_answer(reason)
    if reason is RefusalReason.CERT_REVOKED:
        # Refused at CONNECT like any bad certificate, yet the device proved its key and chain:
        # its record says so (refusals.REVOKED_RECORD).
        status, code, words = REVOKED_RECORD
        answer = DeviceAnswer(answer.http_status, code, words, status)
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
        x509_path=_path(x509_path, current, leaf_sha256),
        # What the device still holds: the last bundle and certificate it was given.
        trust_bundle_id=current.trust_bundle_id if current else None,
        trust_bundle_version=current.trust_bundle_version if current else None,
        issued_certificate=current.issued_certificate if current else None,
    )
