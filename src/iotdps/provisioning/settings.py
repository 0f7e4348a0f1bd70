"""The service's own settings: its ID scope and the allocation policy enrollments default to."""

from __future__ import annotations

from dataclasses import dataclass

from iotdps.enrollment.models import ALLOCATION_POLICIES, AllocationPolicy
from iotdps.errors import InvalidInput

__all__ = ["ServiceSettings"]


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    id_scope: str
    default_allocation_policy: AllocationPolicy = "hashed"

    def __post_init__(self) -> None:
        if self.default_allocation_policy == "custom":
            raise InvalidInput("the service default allocation policy cannot be custom")
        if self.default_allocation_policy not in ALLOCATION_POLICIES:
            raise InvalidInput(f"unknown allocation policy {self.default_allocation_policy!r}")
