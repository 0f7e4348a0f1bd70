"""The IoT hubs linked to the service: the candidates of every allocation, with their weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotdps.errors import InvalidInput
from iotdps.jsonfields import drop_none

__all__ = ["LinkedHub"]


@dataclass(frozen=True, slots=True)
class LinkedHub:
    host_name: str
    allocation_weight: int = 1
    apply_allocation_policy: bool = True
    location: str | None = None

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
            }
        )
