"""geoLatency: the lowest-latency hub. A self-hosted service knows no geography or latency,
so this degrades to the weighted hash, which is also Azure's tie-breaker between equally
near hubs (azure-wire-protocol.md 6.3)."""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.allocation.hashed import choose_hashed
from iotdps.allocation.hubs import LinkedHub

__all__ = ["choose_geo"]


def choose_geo(registration_id: str, hubs: Sequence[LinkedHub]) -> LinkedHub:
    return choose_hashed(registration_id, hubs)
