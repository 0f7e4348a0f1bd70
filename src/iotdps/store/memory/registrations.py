"""Registration records in memory (every transaction holds the store's one lock)."""

from __future__ import annotations

from iotdps.ids import registration_key
from iotdps.ports import Page
from iotdps.provisioning.records import RegistrationRecord
from iotdps.store import _records as rec
from iotdps.store.memory.tx import MemoryTx, Row, stamp

__all__ = ["Registrations"]


class Registrations:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row) -> RegistrationRecord:
        return rec.registration_from_doc(row.load(), *stamp(row))

    async def get(self, registration_id: str, *, for_update: bool = False) -> RegistrationRecord | None:
        # Every transaction already holds the store's one lock, so for_update has nothing to add.
        row = self._tx.get("registrations", registration_key(registration_id))
        return self._load(row) if row else None

    async def put(self, record: RegistrationRecord, if_match: str | None = None) -> RegistrationRecord:
        what = f"registration {record.registration_id}"
        row = self._tx.put(
            "registrations",
            registration_key(record.registration_id),
            what,
            rec.registration_to_doc(record),
            if_match,
            record.enrollment_group_id,
        )
        return self._load(row)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        self._tx.delete("registrations", registration_key(registration_id), f"registration {registration_id}", if_match)

    async def list(
        self, page_size: int = 100, continuation: str | None = None, *, enrollment_group_id: str | None = None
    ) -> Page[RegistrationRecord]:
        rows = self._tx.read("registrations")
        keys = [str(k) for k, r in rows.items() if enrollment_group_id is None or r.kind == enrollment_group_id]
        chosen, token = self._tx.page("registrations", keys, page_size, continuation, str)
        return Page([self._load(r) for r in chosen], token)
