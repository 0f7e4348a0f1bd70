"""Reprovisioning: where a re-registering device goes and what happens to its hub data.

The table (azure-wire-protocol.md 7). "Previous hub" is the hub of the current registration
record; a record deleted with DELETE /registrations/{id} has none, so the next registration
is an initial assignment.

| previous hub | updateHubAssignment | migrateDeviceData | hub       | substatus                         | twin    |
|--------------|---------------------|-------------------|-----------|-----------------------------------|---------|
| none         | any                 | any               | allocated | initialAssignment                 | initial |
| H            | false               | any               | H         | previous substatus (kept)         | keep    |
| H            | true                | true              | H         | reprovisionedToInitialAssignment  | keep    |
| H            | true                | true              | H' != H   | deviceDataMigrated                | migrate |
| H            | true                | false             | H         | reprovisionedToInitialAssignment  | reset   |
| H            | true                | false             | H' != H   | deviceDataReset                   | initial |

Choices where Azure documents nothing (section 12.3): "never re-provision" keeps the previous
substatus, since nothing was re-provisioned; a reset on the same hub does reset the twin (the
docs call this policy a factory reset) and reports reprovisionedToInitialAssignment.
Twin actions: `initial` = the initial twin (the webhook's when it gave one, else the
enrollment's) on a fresh identity; `keep` = the identity's twin as it is; `migrate` = the old
hub's twin copied to the new hub; `reset` = tags and desired replaced by the initial twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from iotdps.enrollment.models import ReprovisionPolicy
from iotdps.provisioning.records import RegistrationRecord, Substatus

__all__ = ["Placement", "TwinAction", "place", "previous_hub"]

TwinAction = Literal["initial", "keep", "migrate", "reset"]


@dataclass(frozen=True, slots=True)
class Placement:
    hub: str
    substatus: Substatus
    twin: TwinAction


def previous_hub(current: RegistrationRecord | None) -> str | None:
    return current.assigned_hub if current is not None and current.assigned_hub else None


def place(current: RegistrationRecord | None, policy: ReprovisionPolicy, allocated: str | None) -> Placement:
    """Apply the table. `allocated` may be None only when the device keeps its previous hub."""
    before = previous_hub(current)
    if before is None:
        if allocated is None:
            raise ValueError("an initial assignment needs an allocated hub")
        return Placement(allocated, "initialAssignment", "initial")
    if not policy.update_hub_assignment:
        kept: Substatus = (current.substatus if current is not None else None) or "initialAssignment"
        return Placement(before, kept, "keep")
    if allocated is None:
        raise ValueError("updateHubAssignment needs an allocated hub")
    same = allocated.lower() == before.lower()
    if policy.migrate_device_data:
        if same:
            return Placement(before, "reprovisionedToInitialAssignment", "keep")
        return Placement(allocated, "deviceDataMigrated", "migrate")
    if same:
        return Placement(before, "reprovisionedToInitialAssignment", "reset")
    return Placement(allocated, "deviceDataReset", "initial")
