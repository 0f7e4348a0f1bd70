"""Enrollments: individual enrollments and enrollment groups (with the two index tables a
group's X.509 lookups go through: signing-certificate thumbprints and CA references)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Table, bindparam, delete, select

from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.ids import registration_key
from iotdps.ports import Page
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store.sql import keyed
from iotdps.store.sql.tx import SqlTx

__all__ = ["Enrollments", "Groups"]


class Enrollments:
    _t = t.individual_enrollments

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> IndividualEnrollment:
        return rec.enrollment_from_doc(row.doc, *keyed.stamp(row))

    async def get(self, registration_id: str) -> IndividualEnrollment | None:
        row = await keyed.get(self._tx, self._t, {"registration_id": registration_key(registration_id)})
        return self._load(row) if row else None

    async def put(self, enrollment: IndividualEnrollment, if_match: str | None = None) -> IndividualEnrollment:
        doc = rec.enrollment_to_doc(enrollment)
        stamp = await keyed.put(
            self._tx,
            self._t,
            {"registration_id": registration_key(enrollment.registration_id)},
            f"enrollment {enrollment.registration_id}",
            doc,
            if_match,
            {"attestation_type": enrollment.attestation.type},
        )
        return rec.enrollment_from_doc(doc, *stamp)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        key = {"registration_id": registration_key(registration_id)}
        await keyed.delete_row(self._tx, self._t, key, f"enrollment {registration_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[IndividualEnrollment]:
        rows, token = await keyed.page(self._tx, self._t, "registration_id", page_size, continuation)
        return Page([self._load(r) for r in rows], token)

    async def list_x509(self) -> Sequence[IndividualEnrollment]:
        rows = await keyed.select_docs(
            self._tx, self._t, self._t.c.attestation_type == "x509", order="registration_id", shape="x509"
        )
        return [self._load(r) for r in rows]


class Groups:
    _t = t.enrollment_groups

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> EnrollmentGroup:
        return rec.group_from_doc(row.doc, *keyed.stamp(row))

    async def get(self, group_id: str) -> EnrollmentGroup | None:
        row = await keyed.get(self._tx, self._t, {"group_id": group_id})
        return self._load(row) if row else None

    async def put(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup:
        gid = group.enrollment_group_id
        doc = rec.group_to_doc(group)
        stamp = await keyed.put(
            self._tx,
            self._t,
            {"group_id": gid},
            f"enrollment group {gid}",
            doc,
            if_match,
            {"attestation_type": group.attestation.type},
        )
        # The group row is written (and locked) first, so concurrent puts of one group
        # rewrite its index rows one after the other.
        for index, column, values in (
            (t.group_signing_thumbprints, "sha256", rec.group_signing_thumbprints(group)),
            (t.group_ca_references, "ca_name", rec.group_ca_references(group)),
        ):
            await self._tx.run(delete(index).where(index.c.group_id == gid))
            if values:
                await self._tx.run(index.insert().values([{"group_id": gid, column: v} for v in sorted(values)]))
        return rec.group_from_doc(doc, *stamp)

    async def delete(self, group_id: str, if_match: str | None = None) -> None:
        # Index rows go with the group (ON DELETE CASCADE).
        await keyed.delete_row(self._tx, self._t, {"group_id": group_id}, f"enrollment group {group_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[EnrollmentGroup]:
        rows, token = await keyed.page(self._tx, self._t, "group_id", page_size, continuation)
        return Page([self._load(r) for r in rows], token)

    async def _through(self, index: Table, column: str, value: str) -> Sequence[EnrollmentGroup]:
        return list(
            await self._tx.cached(("through", index.name, value), lambda: self._through_db(index, column, value))
        )

    async def _through_db(self, index: Table, column: str, value: str) -> Sequence[EnrollmentGroup]:
        ids = select(index.c.group_id).where(index.c[column] == bindparam("value"))
        rows = await keyed.select_docs(
            self._tx,
            self._t,
            self._t.c.group_id.in_(ids),
            order="group_id",
            shape=f"{index.name}.{column}",
            bind={"value": value},
        )
        return tuple(self._load(r) for r in rows)

    async def find_by_signing_thumbprint(self, sha256_thumbprint: str) -> Sequence[EnrollmentGroup]:
        return await self._through(t.group_signing_thumbprints, "sha256", sha256_thumbprint.upper())

    async def find_by_ca_reference(self, ca_name: str) -> Sequence[EnrollmentGroup]:
        return await self._through(t.group_ca_references, "ca_name", ca_name)

    async def list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        return list(await self._tx.cached(("symmetricKey groups",), self._list_symmetric_key))

    async def _list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        rows = await keyed.select_docs(
            self._tx, self._t, self._t.c.attestation_type == "symmetricKey", order="group_id", shape="symmetricKey"
        )
        return tuple(self._load(r) for r in rows)
