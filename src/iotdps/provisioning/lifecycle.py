"""How a registration record's status moves: the one table of the registration lifecycle.

Why a registration was refused and what the device is told live on the floor
(`iotdps.refusals`); this module only says which status may follow which.
"""

from __future__ import annotations

from iotdps.provisioning.registrations import RegistrationStatus

__all__ = ["TERMINAL_STATUSES", "TRANSITIONS", "check_transition"]

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
