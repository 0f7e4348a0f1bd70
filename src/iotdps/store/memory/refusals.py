"""The refusal log in memory: attempts counted into (reason, registration id, peer) entries
and pruned by fair eviction (store._common, "refusal retention"), as the SQL store does."""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.ports import Refusal
from iotdps.store._common import check_refusal_limit, merged_refusal, refusal_key, retained_refusals
from iotdps.store.memory.tx import Committed, MemoryTx, RefusalEntries

__all__ = ["Refusals", "kept_refusals"]


def _count_refusals(entries: RefusalEntries, serial: int, attempts: Sequence[Refusal]) -> tuple[RefusalEntries, int]:
    """A copy of `entries` with `attempts` counted in, and the next insertion number (which
    orders entries like the SQL store's ids: an entry keeps its number when counted into)."""
    merged = dict(entries)
    for attempt in attempts:
        key = refusal_key(attempt)
        found = merged.get(key)
        if found is None:
            merged[key] = (serial, merged_refusal(None, attempt))
            serial += 1
        else:
            merged[key] = (found[0], merged_refusal(found[1], attempt))
    return merged, serial


def kept_refusals(state: Committed, attempts: Sequence[Refusal]) -> tuple[RefusalEntries, int]:
    """The committed entries with `attempts` counted in, as fair eviction keeps them (latest
    attempt first), and the next insertion number."""
    entries, serial = _count_refusals(state.refusals, state.refusal_serial, attempts)
    kept = retained_refusals(((k, n, r) for k, (n, r) in entries.items()), state.refusal_limit)
    return {k: (n, r) for k, n, r in kept}, serial


class Refusals:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    async def add(self, refusal: Refusal) -> None:
        self._tx.check_open()
        self._tx.new_refusals.append(refusal)

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        self._tx.check_open()
        check_refusal_limit(limit)
        # This transaction's own attempts count too, as in the SQL store.
        entries, _ = kept_refusals(self._tx.state, self._tx.new_refusals)
        chosen = [r for _, r in entries.values() if registration_id is None or r.registration_id == registration_id]
        return chosen[:limit]
