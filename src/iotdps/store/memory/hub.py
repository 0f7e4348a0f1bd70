"""The hub's records in memory: device identities, telemetry, queued cloud-to-device messages
and kept MQTT sessions."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from iotdps.errors import AlreadyExists
from iotdps.hub.devices import DeviceIdentity
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ports import Page
from iotdps.store import _records as rec
from iotdps.store._common import check_page_size
from iotdps.store.memory.tx import MemoryTx, Row, stamp

__all__ = ["C2D", "Devices", "HubSessions", "Telemetry"]


class Devices:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row) -> DeviceIdentity:
        return rec.device_from_doc(row.load(), *stamp(row))

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


def _props(props: Mapping[str, str | None]) -> Mapping[str, str | None]:
    # A private copy: no caller can change a stored message through the mapping it passed in.
    return dict(props)


class Telemetry:
    def __init__(self, tx: MemoryTx) -> None:
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

    async def claim_pruning(self, hub: str) -> bool:
        # One process owns the fake: nobody else can be pruning.
        self._tx.check_open()
        return True

    async def prune(self, hub: str, *, before: datetime | None, keep: int | None, limit: int) -> int:
        # The fake applies a prune at once rather than at commit: its committed telemetry is an
        # append-only list, and pruning is idempotent, so a rolled-back prune is merely early.
        self._tx.check_open()
        ours = [m for m in self._tx.state.telemetry if m.hub == hub]
        doomed: set[int] = {m.seq or 0 for m in ours[: max(0, len(ours) - keep)]} if keep is not None else set()
        if before is not None:
            cut = rec.to_utc(before)
            doomed |= {m.seq or 0 for m in ours if m.enqueued < cut}
        chosen = set(sorted(doomed)[:limit])
        self._tx.state.telemetry[:] = [m for m in self._tx.state.telemetry if not (m.hub == hub and m.seq in chosen)]
        return len(chosen)

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
        everything = [*self._tx.state.telemetry, *self._tx.new_telemetry]
        start = 0
        if after is not None:
            start = bisect.bisect_right([m.seq or 0 for m in everything], after)
        chosen = [m for m in everything[start:] if m.hub == hub and (device_id is None or m.device_id == device_id)]
        return chosen[-limit:] if newest else chosen[:limit]


class C2D:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    def _read(self) -> dict[int, CloudMessage]:
        self._tx.check_open()
        return self._tx.c2d if self._tx.c2d is not None else self._tx.state.c2d

    def _write(self) -> dict[int, CloudMessage]:
        self._tx.check_open()
        if self._tx.c2d is None:
            self._tx.c2d = dict(self._tx.state.c2d)
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


class HubSessions:
    def __init__(self, tx: MemoryTx) -> None:
        self._tx = tx

    def _write(self) -> dict[tuple[str, str], HubSession]:
        self._tx.check_open()
        if self._tx.sessions is None:
            self._tx.sessions = dict(self._tx.state.hub_sessions)
        return self._tx.sessions

    async def get(self, hub: str, device_id: str) -> HubSession | None:
        self._tx.check_open()
        rows = self._tx.sessions if self._tx.sessions is not None else self._tx.state.hub_sessions
        return rows.get((hub, device_id))

    async def put(self, session: HubSession) -> None:
        subs = tuple((str(f), int(q)) for f, q in session.subscriptions)
        self._write()[(session.hub, session.device_id)] = replace(session, subscriptions=subs)

    async def delete(self, hub: str, device_id: str) -> None:
        self._write().pop((hub, device_id), None)
