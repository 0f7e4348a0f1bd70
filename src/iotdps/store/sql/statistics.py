"""Counts for the statistics page, by SQL aggregates: no document is loaded."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, func, select

from iotdps.ports import DeviceCounts, ServiceCounts
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql.refusals import kept_refusals
from iotdps.store.sql.tx import SqlTx

__all__ = ["Stats"]


class Stats:
    """Counts by SQL aggregates: no document is loaded. The per-minute buckets are a string
    prefix on SQLite (which keeps times as ISO text) and date_trunc on PostgreSQL."""

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def _count(self, table: Table) -> int:
        return int((await self._tx.run(select(func.count()).select_from(table))).scalar_one())

    async def counts(self) -> ServiceCounts:
        reg = t.registrations
        rows = (await self._tx.run(select(reg.c.status, func.count()).group_by(reg.c.status))).all()
        return ServiceCounts(
            await self._count(t.individual_enrollments),
            await self._count(t.enrollment_groups),
            {str(status): int(n) for status, n in rows},
        )

    def _minute(self, column: Any) -> Any:
        return func.date_trunc("minute", column) if self._tx.pg else func.substr(column, 1, 16)

    def _load_minute(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return rec.to_utc(value).replace(second=0, microsecond=0)
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)

    async def _buckets(self, column: Any, *where: ColumnElement[bool]) -> dict[datetime, int]:
        bucket = self._minute(column).label("minute")
        rows = (await self._tx.run(select(bucket, func.count()).where(*where).group_by(bucket))).all()
        return {self._load_minute(minute): int(n) for minute, n in rows}

    async def per_minute(self, since: datetime) -> tuple[Mapping[datetime, int], Mapping[datetime, int]]:
        reg, ref = t.registrations, t.refusals
        assigned = await self._buckets(reg.c.updated, reg.c.updated >= since, reg.c.status == "assigned")
        # Refusals are entries counted per (reason, registration id, peer): each counts once, in
        # the minute it was last seen, within the same bound as RefusalLog.list (entries past
        # it that pruning has not reached yet are not counted).
        kept = ref.c.id.in_(kept_refusals(self._tx.db.refusal_limit))
        refused = await self._buckets(ref.c.at, ref.c.at >= since, kept)
        return assigned, refused

    async def devices(self, hub: str) -> DeviceCounts:
        dev = t.devices
        status = dev.c.doc["status"].as_string()
        rows = (await self._tx.run(select(status, func.count()).where(dev.c.hub == hub).group_by(status))).all()
        counts = {str(s): int(n) for s, n in rows}
        return DeviceCounts(sum(counts.values()), counts.get("enabled", 0))
