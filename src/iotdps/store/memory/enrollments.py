"""Enrollments in memory: individual enrollments and enrollment groups (a group's X.509
lookups scan the groups: the memory store holds what one test or one demo makes)."""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.ids import registration_key
from iotdps.ports import Page
from iotdps.store import _records as rec
from iotdps.store.memory.tx import MemoryTx, Row, stamp

__all__ = ["Enrollments", "Groups"]


class Enrollments:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row) -> IndividualEnrollment:
        return rec.enrollment_from_doc(row.load(), *stamp(row))

    async def get(self, registration_id: str) -> IndividualEnrollment | None:
        row = self._tx.get("enrollments", registration_key(registration_id))
        return self._load(row) if row else None

    async def put(self, enrollment: IndividualEnrollment, if_match: str | None = None) -> IndividualEnrollment:
        what = f"enrollment {enrollment.registration_id}"
        row = self._tx.put(
            "enrollments",
            registration_key(enrollment.registration_id),
            what,
            rec.enrollment_to_doc(enrollment),
            if_match,
            enrollment.attestation.type,
        )
        return self._load(row)

    async def delete(self, registration_id: str, if_match: str | None = None) -> None:
        self._tx.delete("enrollments", registration_key(registration_id), f"enrollment {registration_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[IndividualEnrollment]:
        keys = [str(k) for k in self._tx.read("enrollments")]
        rows, token = self._tx.page("enrollments", keys, page_size, continuation, str)
        return Page([self._load(r) for r in rows], token)

    async def list_x509(self) -> Sequence[IndividualEnrollment]:
        rows = self._tx.read("enrollments")
        return [self._load(rows[k]) for k in sorted(rows, key=str) if rows[k].kind == "x509"]


class Groups:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row) -> EnrollmentGroup:
        return rec.group_from_doc(row.load(), *stamp(row))

    def _all(self) -> list[EnrollmentGroup]:
        rows = self._tx.read("groups")
        return [self._load(rows[k]) for k in sorted(rows, key=str)]

    async def get(self, group_id: str) -> EnrollmentGroup | None:
        row = self._tx.get("groups", group_id)
        return self._load(row) if row else None

    async def put(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup:
        what = f"enrollment group {group.enrollment_group_id}"
        row = self._tx.put(
            "groups", group.enrollment_group_id, what, rec.group_to_doc(group), if_match, group.attestation.type
        )
        return self._load(row)

    async def delete(self, group_id: str, if_match: str | None = None) -> None:
        self._tx.delete("groups", group_id, f"enrollment group {group_id}", if_match)

    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[EnrollmentGroup]:
        keys = [str(k) for k in self._tx.read("groups")]
        rows, token = self._tx.page("groups", keys, page_size, continuation, str)
        return Page([self._load(r) for r in rows], token)

    async def find_by_signing_thumbprint(self, sha256_thumbprint: str) -> Sequence[EnrollmentGroup]:
        wanted = sha256_thumbprint.upper()
        return [g for g in self._all() if wanted in rec.group_signing_thumbprints(g)]

    async def find_by_ca_reference(self, ca_name: str) -> Sequence[EnrollmentGroup]:
        return [g for g in self._all() if ca_name in rec.group_ca_references(g)]

    async def list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        rows = self._tx.read("groups")
        return [self._load(rows[k]) for k in sorted(rows, key=str) if rows[k].kind == "symmetricKey"]
