"""The audit trail in SQL: appended under the chain's lock, listed by filter, pruned with an
anchor entry (iotdps.audit, the AuditLog port).

The lock: on PostgreSQL, `append` takes a transaction-scoped advisory lock before it reads the
newest entry, so a second transaction appending at the same time waits for the first to commit
and then links to its entry; the primary key on `seq` is the backstop (a fork would be two
entries with one seq). SQLite's transactions begin with the write lock (BEGIN IMMEDIATE), so its
writers are serial already. An admin change appends last, so the lock is held only for the
commit that follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select

from iotdps.audit.chain import GENESIS, AuditDraft, AuditEntry, AuditQuery, link
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql.tx import SqlTx

__all__ = ["AuditTrail"]

# Any constant will do; it only has to be the same on every node sharing the database.
_PG_AUDIT_LOCK = 0x10D9_A0D1


class AuditTrail:
    _t = t.audit_log

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def _tail(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry, under the chain's lock."""
        if self._tx.pg:
            await self._tx.run(select(func.pg_advisory_xact_lock(_PG_AUDIT_LOCK)))
        found = (
            await self._tx.run(select(self._t.c.seq, self._t.c.hash).order_by(self._t.c.seq.desc()).limit(1))
        ).first()
        return (int(found.seq), str(found.hash)) if found is not None else (0, GENESIS)

    async def _insert(self, draft: AuditDraft, seq: int, prev: str) -> AuditEntry:
        entry = link(draft, seq=seq, at=self._tx.now(), prev=prev)
        await self._tx.run(insert(self._t).values(**_row(entry)))
        return entry

    async def append(self, draft: AuditDraft) -> AuditEntry:
        seq, prev = await self._tail()
        return await self._insert(draft, seq + 1, prev)

    async def list(self, query: AuditQuery) -> Sequence[AuditEntry]:
        c = self._t.c
        statement = select(self._t)
        if query.action is not None:
            statement = statement.where(
                or_(c.action == query.action, c.action.startswith(query.action + ".", autoescape=True))
            )
        if query.actor is not None:
            statement = statement.where(c.actor == query.actor)
        if query.target is not None:
            statement = statement.where(c.target == query.target)
        if query.since is not None:
            statement = statement.where(c.at >= query.since)
        if query.after is not None:
            statement = statement.where(c.seq > query.after)
        rows = (await self._tx.run(statement.order_by(c.seq).limit(query.limit))).all()
        return [_entry(r) for r in rows]

    async def prune(self, before: datetime, draft: AuditDraft) -> AuditEntry | None:
        c = self._t.c
        head_seq, head_hash = await self._tail()
        old = (c.at < before) & (c.seq < head_seq)  # never the newest: the anchor links to it
        last = (await self._tx.run(select(c.seq, c.hash).where(old).order_by(c.seq.desc()).limit(1))).first()
        if last is None:
            return None
        removed = (await self._tx.run(select(func.count()).select_from(self._t).where(c.seq <= last.seq))).scalar_one()
        await self._tx.run(delete(self._t).where(c.seq <= last.seq))
        facts = {**draft.detail, "throughSeq": int(last.seq), "throughHash": str(last.hash), "removed": int(removed)}
        return await self._insert(replace(draft, detail=facts), head_seq + 1, head_hash)


def _row(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in AuditEntry.__dataclass_fields__}


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=int(row.seq),
        at=rec.to_utc(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        before=row.before,
        after=row.after,
        detail=row.detail,
        prev=row.prev,
        hash=row.hash,
    )
