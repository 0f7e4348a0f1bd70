"""The `served` column of `iotdps hub list`: whether a running node serves each linked hub."""

from __future__ import annotations

from datetime import datetime

from iotdps.allocation.hubs import LinkedHub
from iotdps.timestamps import format_time, utcnow

__all__ = ["served_text"]


def served_text(hub: LinkedHub, now: datetime | None = None) -> str:
    now = utcnow() if now is None else now
    if hub.served_until is None:
        # Linked by hand (`hub add`, the API) and never served by an iotdps node.
        return "never: no node serves it"
    if hub.unserved(now):
        return f"NO, since {format_time(hub.served_until)}: allocation skips it"
    nodes = hub.serving_nodes(now)
    by = f"by {', '.join(nodes)}; " if nodes else ""
    return f"yes ({by}lease until {format_time(hub.served_until)})"
