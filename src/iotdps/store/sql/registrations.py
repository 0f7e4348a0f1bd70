"""Registration records, and on PostgreSQL the advisory lock that serialises registrations of
one id, the first ones too."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from iotdps.ids import registration_key
from iotdps.ports import Page
from iotdps.provisioning.records import RegistrationRecord
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql import keyed
from iotdps.store.sql.tx import SqlTx

__all__ = ["Registrations"]


class Registrations:
    _t = t.registrations

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> RegistrationRecord:
        return rec.registration_from_doc(row.doc, *keyed.stamp(row))

    async def get(self, registration_id: str, *, for_update: bool = False) -> RegistrationRecord | None:
        if for_update:
            # FOR UPDATE cannot lock a row that does not exist yet; the advisory lock on the
            # id's hash serialises first registrations too (released at commit or rollback).
            await keyed.lock_key(self._tx, "registration lock", "registration:" + registration_key(registration_id))
        row = await keyed.get(
            self._tx, self._t, {"registration_id": registration_key(registration_id)}, lock=for_update
        )
        return self._load(row) if row else None

    async def put(self, record: RegistrationRecord, if_match: str | None = None) -> RegistrationRecord:
        doc = rec.registration_to_doc(record)
        columns = {
            "enrollment_group_id": record.enrollment_group_id,
            "status": record.status,
            "operation_id": record.operation_id,
        }
        stamp = await keyed.put(
            self._tx,
            self._t,
            {"registration_id": registration_key(record.registration_id)},
            f"registration {record.registration_id}",
            doc,
            if_match,
            columns,
        )
        return rec.registration_from_doc(doc, *stamp)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        await keyed.delete_row(
            self._tx,
            self._t,
            {"registration_id": registration_key(registration_id)},
            f"registration {registration_id}",
            if_match,
        )

    async def list(
        self, page_size: int = 100, continuation: str | None = None, *, enrollment_group_id: str | None = None
    ) -> Page[RegistrationRecord]:
        filters = [] if enrollment_group_id is None else [self._t.c.enrollment_group_id == enrollment_group_id]
        rows, token = await keyed.page(self._tx, self._t, "registration_id", page_size, continuation, *filters)
        return Page([self._load(r) for r in rows], token)
