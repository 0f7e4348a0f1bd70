"""Counts for the statistics page, from the records in memory."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from iotdps.ports import DeviceCounts, ServiceCounts
from iotdps.store import _records as rec
from iotdps.store.memory.refusals import kept_refusals
from iotdps.store.memory.tx import MemoryTx

__all__ = ["Stats"]


def _minute(at: datetime) -> datetime:
    return rec.to_utc(at).replace(second=0, microsecond=0)


class Stats:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def counts(self) -> ServiceCounts:
        by_status: dict[str, int] = {}
        for row in self._tx.read("registrations").values():
            status = str(row.load().get("status"))
            by_status[status] = by_status.get(status, 0) + 1
        return ServiceCounts(len(self._tx.read("enrollments")), len(self._tx.read("groups")), by_status)

    async def per_minute(self, since: datetime) -> tuple[Mapping[datetime, int], Mapping[datetime, int]]:
        since = rec.to_utc(since)
        assigned: dict[datetime, int] = {}
        for row in self._tx.read("registrations").values():
            if row.updated is not None and row.updated >= since and row.load().get("status") == "assigned":
                minute = _minute(row.updated)
                assigned[minute] = assigned.get(minute, 0) + 1
        refused: dict[datetime, int] = {}
        # Refusals are entries counted per (reason, registration id, peer): each counts once,
        # in the minute it was last seen (as the SQL store does).
        entries, _ = kept_refusals(self._tx.state, self._tx.new_refusals)
        for _, refusal in entries.values():
            if rec.to_utc(refusal.at) >= since:
                minute = _minute(refusal.at)
                refused[minute] = refused.get(minute, 0) + 1
        return assigned, refused

    async def devices(self, hub: str) -> DeviceCounts:
        total = enabled = 0
        for key, row in self._tx.read("devices").items():
            if isinstance(key, tuple) and key[0] == hub:
                total += 1
                enabled += row.load().get("status") == "enabled"
        return DeviceCounts(total, enabled)
