"""The hub's records: device identities, persisted telemetry, queued cloud-to-device messages
and the MQTT sessions a device asked to keep."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from iotdps.errors import AlreadyExists
from iotdps.hub.devices import DeviceIdentity
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ports import Page
from iotdps.store import _records as rec
from iotdps.store import tables as t
from iotdps.store._common import check_page_size
from iotdps.store.sql import keyed
from iotdps.store.sql.tx import SqlTx

__all__ = ["C2D", "Devices", "HubSessions", "Telemetry", "prune_lock_key"]


class Devices:
    _t = t.devices

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(row: Row[Any]) -> DeviceIdentity:
        return rec.device_from_doc(row.doc, *keyed.stamp(row))

    async def get(self, hub: str, device_id: str, *, for_update: bool = False) -> DeviceIdentity | None:
        row = await keyed.get(self._tx, self._t, {"hub": hub, "device_id": device_id}, lock=for_update)
        return self._load(row) if row else None

    async def put(self, device: DeviceIdentity, if_match: str | None = None) -> DeviceIdentity:
        doc = rec.device_to_doc(device)
        stamp = await keyed.put(
            self._tx,
            self._t,
            {"hub": device.hub, "device_id": device.device_id},
            f"device {device.device_id} on {device.hub}",
            doc,
            if_match,
            {"registration_id": device.registration_id},
        )
        return rec.device_from_doc(doc, *stamp)

    async def delete(self, hub: str, device_id: str, if_match: str | None = None) -> None:
        await keyed.delete_row(
            self._tx, self._t, {"hub": hub, "device_id": device_id}, f"device {device_id} on {hub}", if_match
        )

    async def list(self, hub: str, page_size: int = 100, continuation: str | None = None) -> Page[DeviceIdentity]:
        rows, token = await keyed.page(self._tx, self._t, "device_id", page_size, continuation, self._t.c.hub == hub)
        return Page([self._load(r) for r in rows], token)


def _bag(props: object) -> dict[str, str | None]:
    return {str(k): (None if v is None else str(v)) for k, v in dict(props or {}).items()}  # type: ignore[call-overload]


class Telemetry:
    _t = t.hub_telemetry

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def add_many(self, messages: Sequence[TelemetryMessage]) -> None:
        if not messages:
            return
        rows = [
            {
                "hub": m.hub,
                "device_id": m.device_id,
                "module_id": m.module_id,
                "enqueued": m.enqueued,
                "properties": {
                    "system": dict(m.system_properties),
                    "application": dict(m.application_properties),
                },
                "body": m.body,
            }
            for m in messages
        ]
        await self._tx.run_prebuilt_many(("insert", self._t.name), self._t.insert, rows)

    async def list(
        self,
        hub: str,
        device_id: str | None = None,
        *,
        after: int | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> Sequence[TelemetryMessage]:
        check_page_size(limit)
        query = select(self._t).where(self._t.c.hub == hub)
        if device_id is not None:
            query = query.where(self._t.c.device_id == device_id)
        if after is not None:
            query = query.where(self._t.c.seq > after)
        order = self._t.c.seq.desc() if newest else self._t.c.seq
        rows = list((await self._tx.run(query.order_by(order).limit(limit))).all())
        if newest:
            rows.reverse()
        return [
            TelemetryMessage(
                hub=r.hub,
                device_id=r.device_id,
                body=bytes(r.body),
                enqueued=rec.to_utc(r.enqueued),
                system_properties=_bag(r.properties.get("system")),
                application_properties=_bag(r.properties.get("application")),
                module_id=r.module_id,
                seq=int(r.seq),
            )
            for r in rows
        ]

    async def claim_pruning(self, hub: str) -> bool:
        """PostgreSQL: a transaction-level advisory lock per hub, so that of the nodes sharing
        the database one prunes a hub at a time (the others skip it this round). Transaction
        level, not session level: a pooled connection goes back to the pool with it released,
        even when the unit fails. SQLite serialises writers itself (one node per file)."""
        if not self._tx.pg:
            return True
        taken = await self._tx.run(select(func.pg_try_advisory_xact_lock(prune_lock_key(hub))))
        return bool(taken.scalar())

    async def prune(self, hub: str, *, before: datetime | None, keep: int | None, limit: int) -> int:
        """Delete up to `limit` of the hub's oldest messages that are enqueued before `before`
        or beyond its `keep` newest; the number deleted. Bounded, so a prune is a short
        transaction between the writer's batches, never a long lock."""
        c = self._t.c
        doomed = []
        if keep is not None:
            cutoff = (
                await self._tx.run(select(c.seq).where(c.hub == hub).order_by(c.seq.desc()).offset(keep).limit(1))
            ).scalar()
            if cutoff is not None:
                doomed.append(c.seq <= cutoff)
        if before is not None:
            doomed.append(c.enqueued < before)
        if not doomed:
            return 0
        oldest = select(c.seq).where(c.hub == hub, or_(*doomed)).order_by(c.seq).limit(limit)
        result = await self._tx.run(delete(self._t).where(c.seq.in_(oldest.scalar_subquery())))
        return int(getattr(result, "rowcount", 0) or 0)


def prune_lock_key(hub: str) -> int:
    """The advisory lock key (a signed 64-bit number) of `hub`'s pruning: a hash, namespaced so
    that another use of advisory locks in the same database does not collide with it."""
    digest = hashlib.blake2b(f"iotdps.telemetry.prune\0{hub}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class C2D:
    _t = t.hub_c2d

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    @staticmethod
    def _load(r: Row[Any]) -> CloudMessage:
        return CloudMessage(
            hub=r.hub,
            device_id=r.device_id,
            message_id=r.message_id,
            body=bytes(r.body),
            enqueued=rec.to_utc(r.enqueued),
            expires=rec.to_utc(r.expires) if r.expires is not None else None,
            system_properties=_bag(r.properties.get("system")),
            application_properties=_bag(r.properties.get("application")),
            seq=int(r.seq),
        )

    async def add(self, message: CloudMessage) -> CloudMessage:
        taken = (await self._tx.run(select(self._t.c.seq).where(self._t.c.message_id == message.message_id))).first()
        if taken is not None:
            raise AlreadyExists(f"cloud-to-device message {message.message_id} is already queued")
        statement = (
            self._t.insert()
            .values(
                hub=message.hub,
                device_id=message.device_id,
                message_id=message.message_id,
                enqueued=message.enqueued,
                expires=message.expires,
                properties={
                    "system": dict(message.system_properties),
                    "application": dict(message.application_properties),
                },
                body=message.body,
            )
            .returning(self._t)
        )
        return self._load((await self._tx.run(statement)).one())

    async def pending(
        self, hub: str, device_id: str, now: datetime, *, after: int | None = None, limit: int = 100
    ) -> Sequence[CloudMessage]:
        check_page_size(limit)
        query = select(self._t).where(
            self._t.c.hub == hub,
            self._t.c.device_id == device_id,
            (self._t.c.expires.is_(None)) | (self._t.c.expires > now),
        )
        if after is not None:
            query = query.where(self._t.c.seq > after)
        rows = (await self._tx.run(query.order_by(self._t.c.seq).limit(limit))).all()
        return [self._load(r) for r in rows]

    async def complete(self, hub: str, device_id: str, seq: int) -> bool:
        result = await self._tx.run(
            delete(self._t).where(self._t.c.seq == seq, self._t.c.hub == hub, self._t.c.device_id == device_id)
        )
        return bool(getattr(result, "rowcount", 0))

    async def count(self, hub: str, device_id: str) -> int:
        query = select(func.count()).select_from(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id)
        return int((await self._tx.run(query)).scalar_one())

    async def expire(self, now: datetime) -> int:
        result = await self._tx.run(delete(self._t).where(self._t.c.expires <= now))
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge(self, hub: str, device_id: str) -> int:
        result = await self._tx.run(delete(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id))
        return int(getattr(result, "rowcount", 0) or 0)


class HubSessions:
    _t = t.hub_sessions

    def __init__(self, tx: SqlTx) -> None:
        self._tx = tx

    async def get(self, hub: str, device_id: str) -> HubSession | None:
        row = (
            await self._tx.run(select(self._t.c.doc).where(self._t.c.hub == hub, self._t.c.device_id == device_id))
        ).first()
        if row is None:
            return None
        doc = row.doc
        return HubSession(
            hub,
            device_id,
            tuple((str(f), int(q)) for f, q in doc.get("subscriptions") or ()),
            int(doc.get("desiredVersionSent", 0)),
        )

    async def put(self, session: HubSession) -> None:
        doc = {
            "subscriptions": [[f, q] for f, q in session.subscriptions],
            "desiredVersionSent": session.desired_version_sent,
        }
        values = {"doc": doc, "updated": self._tx.now()}
        inserter = pg_insert if self._tx.pg else sqlite_insert
        await self._tx.run(
            inserter(self._t)
            .values(hub=session.hub, device_id=session.device_id, **values)
            .on_conflict_do_update(index_elements=["hub", "device_id"], set_=values)
        )

    async def delete(self, hub: str, device_id: str) -> None:
        await self._tx.run(delete(self._t).where(self._t.c.hub == hub, self._t.c.device_id == device_id))
