"""Retention: removing old entries without breaking the chain.

The log is never capped behind the operator's back: entries go only when retention says so
(`[audit] retention_days`, or `iotdps audit prune --older-than-days N`). A prune removes the
oldest entries up to a time (never the newest one) and appends an `audit.pruned` entry, in the
same transaction, that names the last entry removed (`throughSeq`, `throughHash`) and how many
went: the oldest entry left links to that hash, so verification still runs from there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from iotdps.audit.actions import PRUNED
from iotdps.audit.chain import Actor, AuditDraft, AuditEntry
from iotdps.errors import InvalidInput
from iotdps.ports import Store

__all__ = ["MAX_RETENTION_DAYS", "prune"]

MAX_RETENTION_DAYS = 36_500


async def prune(store: Store, *, older_than_days: int, now: datetime, actor: Actor) -> AuditEntry | None:
    """Remove the entries older than `older_than_days` days; the `audit.pruned` entry written,
    or None when nothing was old enough."""
    if not 1 <= older_than_days <= MAX_RETENTION_DAYS:
        raise InvalidInput(f"the audit retention is 1..{MAX_RETENTION_DAYS} days")
    before = now - timedelta(days=older_than_days)
    draft = AuditDraft(actor, PRUNED, "audit", detail={"olderThan": before.isoformat(), "days": older_than_days})
    async with store.begin() as uow:
        return await uow.audit.prune(before, draft)
