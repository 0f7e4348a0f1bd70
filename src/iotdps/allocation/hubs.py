"""The IoT hubs linked to the service: the candidates of every allocation, with their weights.

Three fields are ours, not Azure's:
- `served_by`: each iotdps node's serving lease on the hub, (node id, lease end), sorted by
  node id. wiring/hub_leases.py renews a node's while it runs and removes it when the node
  stops cleanly; a node killed outright leaves it to run out. Per node, so that one node of
  several stopping does not end the others' claim on a hub they all serve.
- `served_until`: the latest lease end of any node (of `served_by`, or when none is left the
  moment the last one ended). A hub whose lease ran out is served by no running node, and
  allocation skips it: a device sent there could never connect. A hub no node ever served
  (None) is allocated to as before, and `iotdps up` warns about it.
- `implicit`: the hub `iotdps up` made because no hub was configured. It follows the DPS host
  name: a start under another name replaces it instead of leaving it linked and unserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps.errors import InvalidInput
from iotdps.jsonfields import drop_none
from iotdps.timestamps import format_time, parse_time

__all__ = ["LinkedHub", "served_by_from_json"]


@dataclass(frozen=True, slots=True)
class LinkedHub:
    host_name: str
    allocation_weight: int = 1
    apply_allocation_policy: bool = True
    location: str | None = None
    served_until: datetime | None = None
    implicit: bool = False
    served_by: tuple[tuple[str, datetime], ...] = ()

    def unserved(self, now: datetime) -> bool:
        """True when a node served this hub and its lease has run out (see the module doc)."""
        return self.served_until is not None and self.served_until <= now

    def serving_nodes(self, now: datetime) -> tuple[str, ...]:
        """The nodes whose lease on this hub is live at `now`."""
        return tuple(node for node, until in self.served_by if until > now)

    def __post_init__(self) -> None:
        if not self.host_name:
            raise InvalidInput("a linked hub needs a host name")
        if not 1 <= self.allocation_weight <= 1000:
            raise InvalidInput(f"allocationWeight of hub {self.host_name} must be 1..1000")

    def to_json(self) -> dict[str, Any]:
        return drop_none(
            {
                "name": self.host_name,
                "allocationWeight": self.allocation_weight,
                "applyAllocationPolicy": self.apply_allocation_policy,
                "location": self.location,
                "servedUntil": format_time(self.served_until) if self.served_until is not None else None,
                "implicit": True if self.implicit else None,
                "servedBy": {node: format_time(until) for node, until in self.served_by} or None,
            }
        )


def served_by_from_json(value: object) -> tuple[tuple[str, datetime], ...]:
    """`served_by` from its JSON ({node id: lease end}); a hub written before the per-node
    leases (servedUntil only) has none, and an entry that is not a time is not a lease."""
    if not isinstance(value, dict):
        return ()
    return tuple(sorted((str(node), parse_time(until)) for node, until in value.items() if isinstance(until, str)))
