"""The refusal log: attempts counted into (reason, registration id, peer) entries, pruned by
fair eviction (store._common, "refusal retention") as one window query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from iotdps.ports import Refusal
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store._common import check_refusal_limit, refusal_key, refusal_source
from iotdps.store.sql.tx import SqlTx

__all__ = ["Refusals", "kept_refusals"]


def kept_refusals(limit: int) -> Select[Any]:
    """Ids of the `limit` entries fair eviction keeps (store._common, "refusal retention"):
    ranked within their (source, reason), newest first; kept by rank, then recency."""
    table = t.refusals
    rank = (
        func.row_number()
        .over(partition_by=(table.c.source, table.c.reason), order_by=(table.c.at.desc(), table.c.id.desc()))
        .label("rank")
    )
    ranked = select(table.c.id, table.c.at, rank).subquery("ranked")
    return select(ranked.c.id).order_by(ranked.c.rank, ranked.c.at.desc(), ranked.c.id.desc()).limit(limit)


class Refusals:
    _t = t.refusals

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _upsert(pg: bool) -> Any:
        """Count an attempt into its (reason, registration id, peer) entry, or start one."""
        table = t.refusals
        statement = (pg_insert if pg else sqlite_insert)(table)
        latest = ("at", "message", "attestation_type", "enrollment")
        return statement.on_conflict_do_update(
            index_elements=["reason", "registration_id", "peer"],
            set_={
                "attempts": table.c.attempts + statement.excluded.attempts,
                **{name: statement.excluded[name] for name in latest},
            },
        )

    async def add(self, refusal: Refusal) -> None:
        reason, registration_id, peer = refusal_key(refusal)
        pg = self._tx.pg
        await self._tx.run_prebuilt(
            ("refusal upsert", pg),
            lambda: self._upsert(pg),
            {
                "registration_id": registration_id,
                "reason": reason,
                "peer": peer,
                "source": refusal_source(peer),
                "at": refusal.at,
                "first_at": refusal.first_at or refusal.at,
                "attempts": refusal.count,
                "message": refusal.message,
                "attestation_type": refusal.attestation_type,
                "enrollment": refusal.enrollment,
            },
        )
        if self._tx.db.count_refusal():
            kept = kept_refusals(self._tx.db.refusal_limit)
            await self._tx.run(delete(self._t).where(self._t.c.id.not_in(kept)))

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        check_refusal_limit(limit)
        # Pruning runs every few inserts; the same rule applied here makes the bound exact.
        kept = kept_refusals(self._tx.db.refusal_limit).subquery("kept")
        query = select(self._t).join(kept, kept.c.id == self._t.c.id)
        if registration_id is not None:
            query = query.where(self._t.c.registration_id == registration_id)
        rows = (await self._tx.run(query.order_by(self._t.c.at.desc(), self._t.c.id.desc()).limit(limit))).all()
        return [
            Refusal(
                registration_id=r.registration_id,
                reason=r.reason,
                message=r.message,
                attestation_type=r.attestation_type,
                at=rec.to_utc(r.at),
                enrollment=r.enrollment,
                peer=r.peer or None,
                count=r.attempts,
                first_at=rec.to_utc(r.first_at),
            )
            for r in rows
        ]
