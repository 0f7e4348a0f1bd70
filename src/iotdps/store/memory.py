"""The in-memory store: the reference behaviour of the `Store` port, and the fake for tests.

A transaction works on the committed state copy-on-write (a table is copied the first time the
transaction writes it) and swaps its tables in on commit; an exception discards them, so
nothing of a failed block is ever visible. One asyncio.Lock serialises transactions, which is
how SQLite's single writer behaves: two concurrent registrations of one id run one after the
other. Do not open a transaction inside another in the same task: it would wait forever.

Records are kept as JSON text built by `iotdps.store._records`, exactly what the SQL store
writes, so a value the database could not hold fails here too, and no caller can mutate a
stored record through an object it was handed.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.errors import AlreadyExists, InvalidInput, StoreError
from iotdps.hub.devices import DeviceIdentity
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ids import new_etag, registration_key
from iotdps.ports import (
    C2DRepo,
    CaRepo,
    Clock,
    DeviceCounts,
    DeviceRepo,
    EnrollmentRepo,
    GroupRepo,
    HubSessionRepo,
    LinkedHubRepo,
    Page,
    Refusal,
    RefusalLog,
    RegistrationRepo,
    ServiceCounts,
    SettingsRepo,
    StatisticsRepo,
    TelemetryRepo,
)
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import _records as rec
from iotdps.store._common import (
    DEFAULT_REFUSAL_LIMIT,
    SystemClock,
    check_delete,
    check_page_size,
    check_put,
    decode_token,
    dump_doc,
    encode_token,
    merged_refusal,
    refusal_key,
    retained_refusals,
)

_T = TypeVar("_T")

__all__ = ["MemoryStore"]

_TABLES = ("enrollments", "groups", "cas", "hubs", "settings", "registrations", "devices")


@dataclass(frozen=True, slots=True)
class _Row:
    doc: str
    etag: str | None
    created: datetime | None
    updated: datetime | None
    kind: str | None = None  # attestation type of enrollments and groups

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.doc)
        return loaded


class _Tx:
    """One transaction's view: committed tables plus the ones it has copied and changed."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.clock = store.clock
        self.changed: dict[str, dict[Hashable, _Row]] = {}
        self.new_refusals: list[Refusal] = []
        self.new_telemetry: list[TelemetryMessage] = []
        self.c2d: dict[int, CloudMessage] | None = None  # copied on first write
        self.sessions: dict[tuple[str, str], HubSession] | None = None
        self.seq = dict(store.seq)
        self.open = True

    def read(self, table: str) -> Mapping[Hashable, _Row]:
        self.check_open()
        return self.changed.get(table, self.store.tables[table])

    def write(self, table: str) -> dict[Hashable, _Row]:
        self.check_open()
        if table not in self.changed:
            self.changed[table] = dict(self.store.tables[table])
        return self.changed[table]

    def check_open(self) -> None:
        if not self.open:
            raise StoreError("the transaction has ended")

    def now(self) -> datetime:
        return rec.to_utc(self.clock.now())

    # Generic operations over one keyed table ---------------------------------------

    def get(self, table: str, key: Hashable) -> _Row | None:
        return self.read(table).get(key)

    def put(
        self,
        table: str,
        key: Hashable,
        what: str,
        doc: Mapping[str, Any],
        if_match: str | None,
        kind: str | None = None,
    ) -> _Row:
        text = dump_doc(doc, what)
        current = self.read(table).get(key)
        check_put(what, current.etag if current else None, current is not None, if_match)
        now = self.now()
        row = _Row(text, new_etag(), current.created if current and current.created else now, now, kind)
        self.write(table)[key] = row
        return row

    def delete(self, table: str, key: Hashable, what: str, if_match: str | None) -> None:
        current = self.read(table).get(key)
        check_delete(what, current.etag if current else None, current is not None, if_match)
        del self.write(table)[key]

    def page(
        self,
        table: str,
        keys: Sequence[str],
        page_size: int,
        continuation: str | None,
        key_of: Callable[[str], Hashable],
    ) -> tuple[list[_Row], str | None]:
        """Rows of `keys` (already filtered) after the continuation key, in key order."""
        check_page_size(page_size)
        after = decode_token(continuation)
        ordered = sorted(k for k in keys if after is None or k > after)
        chosen = ordered[:page_size]
        rows = self.read(table)
        token = encode_token(chosen[-1]) if len(ordered) > page_size else None
        return [rows[key_of(k)] for k in chosen], token


def _stamp(row: _Row) -> tuple[str | None, datetime | None, datetime | None]:
    return row.etag, row.created, row.updated


class _Enrollments:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: _Row) -> IndividualEnrollment:
        return rec.enrollment_from_doc(row.load(), *_stamp(row))

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


class _Groups:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: _Row) -> EnrollmentGroup:
        return rec.group_from_doc(row.load(), *_stamp(row))

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


class _Cas:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: _Row) -> CaCertificate:
        return rec.ca_from_doc(row.load(), *_stamp(row))

    async def get(self, name: str) -> CaCertificate | None:
        row = self._tx.get("cas", name)
        return self._load(row) if row else None

    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None:
        wanted = sha256_thumbprint.upper()
        if not wanted:
            return None
        for row in self._tx.read("cas").values():
            ca = self._load(row)
            if ca.sha256_thumbprint == wanted:
                return ca
        return None

    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate:
        # The thumbprint is unique: one certificate cannot be two CA records.
        if ca.sha256_thumbprint:
            other = await self.get_by_thumbprint(ca.sha256_thumbprint)
            if other is not None and other.name != ca.name:
                raise AlreadyExists(f"this certificate is already uploaded as CA {other.name!r}")
        row = self._tx.put("cas", ca.name, f"CA certificate {ca.name}", rec.ca_to_doc(ca), if_match)
        return self._load(row)

    async def delete(self, name: str, if_match: str | None = None) -> None:
        self._tx.delete("cas", name, f"CA certificate {name}", if_match)

    async def list(self) -> Sequence[CaCertificate]:
        rows = self._tx.read("cas")
        return [self._load(rows[k]) for k in sorted(rows, key=str)]


class _Hubs:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    async def get(self, host_name: str) -> LinkedHub | None:
        row = self._tx.get("hubs", host_name)
        return rec.hub_from_doc(row.load()) if row else None

    async def put(self, hub: LinkedHub) -> LinkedHub:
        row = self._tx.put("hubs", hub.host_name, f"linked hub {hub.host_name}", rec.hub_to_doc(hub), None)
        return rec.hub_from_doc(row.load())

    async def delete(self, host_name: str) -> None:
        self._tx.delete("hubs", host_name, f"linked hub {host_name}", None)

    async def list(self) -> Sequence[LinkedHub]:
        rows = self._tx.read("hubs")
        return [rec.hub_from_doc(rows[k].load()) for k in sorted(rows, key=str)]


class _Settings:
    _KEY = "service"

    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    async def get(self) -> ServiceSettings | None:
        row = self._tx.get("settings", self._KEY)
        return rec.settings_from_doc(row.load()) if row else None

    async def put(self, settings: ServiceSettings) -> ServiceSettings:
        row = self._tx.put("settings", self._KEY, "service settings", rec.settings_to_doc(settings), None)
        return rec.settings_from_doc(row.load())


class _Registrations:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: _Row) -> RegistrationRecord:
        return rec.registration_from_doc(row.load(), *_stamp(row))

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


class _Devices:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: _Row) -> DeviceIdentity:
        return rec.device_from_doc(row.load(), *_stamp(row))

    async def get(self, hub: str, device_id: str, *, for_update: bool = False) -> DeviceIdentity | None:
        row = self._tx.get("devices", (hub, device_id))
        return self._load(row) if row else None

    async def put(self, device: DeviceIdentity, if_match: str | None = None) -> DeviceIdentity:
        what = f"device {device.device_id} on {device.hub}"
        row = self._tx.put("devices", (device.hub, device.device_id), what, rec.device_to_doc(device), if_match)
        return self._load(row)

    async def delete(self, hub: str, device_id: str, if_match: str | None = None) -> None:
        self._tx.delete("devices", (hub, device_id), f"device {device_id} on {hub}", if_match)

    async def list(self, hub: str, page_size: int = 100, continuation: str | None = None) -> Page[DeviceIdentity]:
        rows = self._tx.read("devices")
        keys = [str(k[1]) for k in rows if isinstance(k, tuple) and k[0] == hub]
        chosen, token = self._tx.page("devices", keys, page_size, continuation, lambda d: (hub, d))
        return Page([self._load(r) for r in chosen], token)


_RefusalEntries = dict[tuple[str, str, str], tuple[int, Refusal]]


def _count_refusals(entries: _RefusalEntries, serial: int, attempts: Sequence[Refusal]) -> tuple[_RefusalEntries, int]:
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


class _Refusals:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    async def add(self, refusal: Refusal) -> None:
        self._tx.check_open()
        self._tx.new_refusals.append(refusal)

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        self._tx.check_open()
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        store = self._tx.store
        # This transaction's own attempts count too, as in the SQL store.
        entries, _ = _count_refusals(store.refusals, store.refusal_serial, self._tx.new_refusals)
        kept = retained_refusals(((k, n, r) for k, (n, r) in entries.items()), store.refusal_limit)
        chosen = [r for _, _, r in kept if registration_id is None or r.registration_id == registration_id]
        return chosen[:limit]


def _props(props: Mapping[str, str | None]) -> Mapping[str, str | None]:
    # A private copy: no caller can change a stored message through the mapping it passed in.
    return dict(props)


class _Telemetry:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    async def add_many(self, messages: Sequence[TelemetryMessage]) -> None:
        self._tx.check_open()
        for m in messages:
            self._tx.seq["telemetry"] += 1
            self._tx.new_telemetry.append(
                replace(
                    m,
                    seq=self._tx.seq["telemetry"],
                    enqueued=rec.to_utc(m.enqueued),
                    system_properties=_props(m.system_properties),
                    application_properties=_props(m.application_properties),
                )
            )

    async def list(
        self,
        hub: str,
        device_id: str | None = None,
        *,
        after: int | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> Sequence[TelemetryMessage]:
        self._tx.check_open()
        check_page_size(limit)
        everything = [*self._tx.store.telemetry, *self._tx.new_telemetry]
        start = 0
        if after is not None:
            start = bisect.bisect_right([m.seq or 0 for m in everything], after)
        chosen = [m for m in everything[start:] if m.hub == hub and (device_id is None or m.device_id == device_id)]
        return chosen[-limit:] if newest else chosen[:limit]


class _C2D:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    def _read(self) -> dict[int, CloudMessage]:
        self._tx.check_open()
        return self._tx.c2d if self._tx.c2d is not None else self._tx.store.c2d

    def _write(self) -> dict[int, CloudMessage]:
        self._tx.check_open()
        if self._tx.c2d is None:
            self._tx.c2d = dict(self._tx.store.c2d)
        return self._tx.c2d

    async def add(self, message: CloudMessage) -> CloudMessage:
        if any(m.message_id == message.message_id for m in self._read().values()):
            raise AlreadyExists(f"cloud-to-device message {message.message_id} is already queued")
        self._tx.seq["c2d"] += 1
        stored = replace(
            message,
            seq=self._tx.seq["c2d"],
            enqueued=rec.to_utc(message.enqueued),
            expires=rec.to_utc(message.expires) if message.expires else None,
            system_properties=_props(message.system_properties),
            application_properties=_props(message.application_properties),
        )
        self._write()[stored.seq or 0] = stored
        return stored

    async def pending(
        self, hub: str, device_id: str, now: datetime, *, after: int | None = None, limit: int = 100
    ) -> Sequence[CloudMessage]:
        check_page_size(limit)
        now = rec.to_utc(now)
        rows = self._read()
        chosen = [
            rows[k]
            for k in sorted(rows)
            if rows[k].hub == hub
            and rows[k].device_id == device_id
            and (after is None or k > after)
            and (rows[k].expires is None or rows[k].expires > now)  # type: ignore[operator]
        ]
        return chosen[:limit]

    async def complete(self, hub: str, device_id: str, seq: int) -> bool:
        current = self._read().get(seq)
        if current is None or (current.hub, current.device_id) != (hub, device_id):
            return False
        del self._write()[seq]
        return True

    async def count(self, hub: str, device_id: str) -> int:
        return sum(1 for m in self._read().values() if m.hub == hub and m.device_id == device_id)

    async def expire(self, now: datetime) -> int:
        now = rec.to_utc(now)
        gone = [k for k, m in self._read().items() if m.expires is not None and m.expires <= now]
        if gone:
            rows = self._write()
            for k in gone:
                del rows[k]
        return len(gone)

    async def purge(self, hub: str, device_id: str) -> int:
        gone = [k for k, m in self._read().items() if m.hub == hub and m.device_id == device_id]
        if gone:
            rows = self._write()
            for k in gone:
                del rows[k]
        return len(gone)


class _HubSessions:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    def _write(self) -> dict[tuple[str, str], HubSession]:
        self._tx.check_open()
        if self._tx.sessions is None:
            self._tx.sessions = dict(self._tx.store.hub_sessions)
        return self._tx.sessions

    async def get(self, hub: str, device_id: str) -> HubSession | None:
        self._tx.check_open()
        rows = self._tx.sessions if self._tx.sessions is not None else self._tx.store.hub_sessions
        return rows.get((hub, device_id))

    async def put(self, session: HubSession) -> None:
        subs = tuple((str(f), int(q)) for f, q in session.subscriptions)
        self._write()[(session.hub, session.device_id)] = replace(session, subscriptions=subs)

    async def delete(self, hub: str, device_id: str) -> None:
        self._write().pop((hub, device_id), None)


def _minute(at: datetime) -> datetime:
    return rec.to_utc(at).replace(second=0, microsecond=0)


class _Stats:
    def __init__(self, tx: _Tx) -> None:
        self._tx = tx

    async def counts(self) -> ServiceCounts:
        by_status: dict[str, int] = {}
        for row in self._tx.read("registrations").values():
            status = str(row.load().get("status"))
            by_status[status] = by_status.get(status, 0) + 1
        return ServiceCounts(len(self._tx.read("enrollments")), len(self._tx.read("groups")), by_status)

    async def per_minute(self, since: datetime) -> tuple[Mapping[datetime, int], Mapping[datetime, int]]:
        since = rec.to_utc(since)
        assigned: dict[datetime, int] = {}
        for row in self._tx.read("registrations").values():
            if row.updated is not None and row.updated >= since and row.load().get("status") == "assigned":
                minute = _minute(row.updated)
                assigned[minute] = assigned.get(minute, 0) + 1
        refused: dict[datetime, int] = {}
        # Refusals are entries counted per (reason, registration id, peer): each counts once,
        # in the minute it was last seen (as the SQL store does).
        store = self._tx.store
        entries, _ = _count_refusals(store.refusals, store.refusal_serial, self._tx.new_refusals)
        kept = [r for _, _, r in retained_refusals(((k, n, r) for k, (n, r) in entries.items()), store.refusal_limit)]
        for refusal in kept:
            if rec.to_utc(refusal.at) >= since:
                minute = _minute(refusal.at)
                refused[minute] = refused.get(minute, 0) + 1
        return assigned, refused

    async def devices(self, hub: str) -> DeviceCounts:
        total = enabled = 0
        for key, row in self._tx.read("devices").items():
            if isinstance(key, tuple) and key[0] == hub:
                total += 1
                enabled += row.load().get("status") == "enabled"
        return DeviceCounts(total, enabled)


class _UnitOfWork:
    def __init__(self, tx: _Tx) -> None:
        # Annotated with the port types: the UnitOfWork protocol's attributes are invariant.
        self.enrollments: EnrollmentRepo = _Enrollments(tx)
        self.groups: GroupRepo = _Groups(tx)
        self.cas: CaRepo = _Cas(tx)
        self.hubs: LinkedHubRepo = _Hubs(tx)
        self.settings: SettingsRepo = _Settings(tx)
        self.registrations: RegistrationRepo = _Registrations(tx)
        self.devices: DeviceRepo = _Devices(tx)
        self.refusals: RefusalLog = _Refusals(tx)
        self.stats: StatisticsRepo = _Stats(tx)
        self.telemetry: TelemetryRepo = _Telemetry(tx)
        self.c2d: C2DRepo = _C2D(tx)
        self.hub_sessions: HubSessionRepo = _HubSessions(tx)

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        return await compute()  # no read cache to keep it in


class MemoryStore:
    """`Store` held in process memory; gone when the process ends."""

    def __init__(self, *, clock: Clock | None = None, refusal_limit: int = DEFAULT_REFUSAL_LIMIT) -> None:
        if refusal_limit < 1:
            raise ValueError("refusal_limit must be at least 1")
        self.clock: Clock = clock or SystemClock()
        self.refusal_limit = refusal_limit
        self.tables: dict[str, dict[Hashable, _Row]] = {name: {} for name in _TABLES}
        # (reason, registration id, peer) -> (insertion number, entry); see store._common.
        self.refusals: _RefusalEntries = {}
        self.refusal_serial = 0
        self.telemetry: list[TelemetryMessage] = []  # ascending seq
        self.c2d: dict[int, CloudMessage] = {}
        self.hub_sessions: dict[tuple[str, str], HubSession] = {}
        self.seq = {"telemetry": 0, "c2d": 0}
        self._lock = asyncio.Lock()
        self._closed = False

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[_Tx]:
        if self._closed:
            raise StoreError("the store is closed")
        async with self._lock:
            tx = _Tx(self)
            try:
                yield tx
            finally:
                tx.open = False

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[_UnitOfWork]:
        async with self._open() as tx:
            yield _UnitOfWork(tx)
            # Reached only when the block ended without an exception: commit.
            self.tables.update(tx.changed)
            self.seq = tx.seq
            self.telemetry.extend(tx.new_telemetry)
            if tx.c2d is not None:
                self.c2d = tx.c2d
            if tx.sessions is not None:
                self.hub_sessions = tx.sessions
            if tx.new_refusals:
                entries, self.refusal_serial = _count_refusals(self.refusals, self.refusal_serial, tx.new_refusals)
                kept = retained_refusals(((k, n, r) for k, (n, r) in entries.items()), self.refusal_limit)
                self.refusals = {k: (n, r) for k, n, r in kept}

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_UnitOfWork]:
        """A unit of work that only reads: one that wrote raises StoreError, and its writes are
        dropped (the SQL store refuses the write itself)."""
        async with self._open() as tx:
            yield _UnitOfWork(tx)
            wrote = tx.changed or tx.new_refusals or tx.new_telemetry or tx.c2d is not None or tx.sessions is not None
            if wrote:
                raise StoreError("a read-only unit of work cannot write")

    async def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"MemoryStore({sum(len(t) for t in self.tables.values())} records)"
