"""The audit trail in memory: the same chain the SQL store keeps (store.sql.audit), for the
contract suite and `memory://` servers. Its one transaction at a time is the chain's lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from iotdps.audit.chain import GENESIS, AuditDraft, AuditEntry, AuditQuery, link
from iotdps.store.memory.tx import MemoryTx

__all__ = ["AuditTrail"]


class AuditTrail:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    def _entries(self) -> list[AuditEntry]:
        self._tx.check_open()
        return self._tx.audit if self._tx.audit is not None else self._tx.state.audit

    def _writable(self) -> list[AuditEntry]:
        self._tx.check_open()
        if self._tx.audit is None:
            self._tx.audit = list(self._tx.state.audit)
        return self._tx.audit

    def _append(self, draft: AuditDraft) -> AuditEntry:
        entries = self._writable()
        seq, prev = (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)
        entry = link(draft, seq=seq + 1, at=self._tx.now(), prev=prev)
        entries.append(entry)
        return entry

    async def append(self, draft: AuditDraft) -> AuditEntry:
        return self._append(draft)

    async def list(self, query: AuditQuery) -> Sequence[AuditEntry]:
        def wanted(e: AuditEntry) -> bool:
            return (
                (query.action is None or e.action == query.action or e.action.startswith(query.action + "."))
                and (query.actor is None or e.actor == query.actor)
                and (query.target is None or e.target == query.target)
                and (query.since is None or e.at >= query.since)
                and (query.after is None or e.seq > query.after)
            )

        return [e for e in self._entries() if wanted(e)][: query.limit]

    async def prune(self, before: datetime, draft: AuditDraft) -> AuditEntry | None:
        entries = self._entries()
        old = [e for e in entries[:-1] if e.at < before]
        if not old:
            return None
        last = old[-1]
        kept = [e for e in entries if e.seq > last.seq]
        removed = len(entries) - len(kept)
        self._writable()[:] = kept
        facts = {**draft.detail, "throughSeq": last.seq, "throughHash": last.hash, "removed": removed}
        return self._append(replace(draft, detail=facts))
