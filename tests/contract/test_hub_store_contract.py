"""Store contract for the hub repositories: telemetry, cloud-to-device queue, MQTT sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from iotdps.errors import AlreadyExists
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.ports import HubStore, Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def hub_store(store: Store) -> HubStore:
    return cast(HubStore, store)


def tm(hub: str, device: str, n: int) -> TelemetryMessage:
    return TelemetryMessage(
        hub,
        device,
        f"body {n}".encode(),
        T0 + timedelta(seconds=n),
        {"message_id": f"m{n}", "content_type": "application/json"},
        {"k": f"v{n}", "empty": "", "none": None},
    )


async def test_telemetry_batches_keep_order_properties_and_filters(store: Store) -> None:
    hs = hub_store(store)
    async with hs.begin() as uow:
        await uow.telemetry.add_many([tm("h1", "d1", 1), tm("h1", "d2", 2), tm("h2", "d1", 3)])
        await uow.telemetry.add_many([])
    async with hs.begin() as uow:
        await uow.telemetry.add_many([tm("h1", "d1", 4), tm("h1", "d1", 5)])
    async with hs.begin() as uow:
        everything = await uow.telemetry.list("h1")
        assert [m.body for m in everything] == [b"body 1", b"body 2", b"body 4", b"body 5"]
        seqs = [m.seq for m in everything]
        assert all(s is not None for s in seqs) and seqs == sorted(seqs) and len(set(seqs)) == 4
        first = everything[0]
        assert first.device_id == "d1" and first.hub == "h1" and first.enqueued == T0 + timedelta(seconds=1)
        assert dict(first.system_properties) == {"message_id": "m1", "content_type": "application/json"}
        assert dict(first.application_properties) == {"k": "v1", "empty": "", "none": None}
        d1 = await uow.telemetry.list("h1", "d1")
        assert [m.body for m in d1] == [b"body 1", b"body 4", b"body 5"]
        after = await uow.telemetry.list("h1", after=everything[1].seq)
        assert [m.body for m in after] == [b"body 4", b"body 5"]
        newest = await uow.telemetry.list("h1", "d1", limit=2, newest=True)
        assert [m.body for m in newest] == [b"body 4", b"body 5"]
        oldest = await uow.telemetry.list("h1", limit=1)
        assert [m.body for m in oldest] == [b"body 1"]
        assert await uow.telemetry.list("nope") == []


async def test_telemetry_of_a_failed_batch_is_not_written(store: Store) -> None:
    hs = hub_store(store)
    with pytest.raises(RuntimeError):
        async with hs.begin() as uow:
            await uow.telemetry.add_many([tm("h1", "d1", 1)])
            raise RuntimeError("boom")
    async with hs.begin() as uow:
        assert await uow.telemetry.list("h1") == []


def cm(device: str, mid: str, expires: datetime | None = None) -> CloudMessage:
    return CloudMessage("h1", device, mid, b"\x00payload " + mid.encode(), T0, expires, {"ack": "full"}, {"a": "b"})


async def test_c2d_queue_pending_complete_expire_purge(store: Store) -> None:
    hs = hub_store(store)
    async with hs.begin() as uow:
        a = await uow.c2d.add(cm("d1", "a"))
        b = await uow.c2d.add(cm("d1", "b", T0 + timedelta(seconds=10)))
        c = await uow.c2d.add(cm("d1", "c", T0 + timedelta(seconds=100)))
        await uow.c2d.add(cm("d2", "x"))
        assert a.seq is not None and b.seq is not None and c.seq is not None and a.seq < b.seq < c.seq
        with pytest.raises(AlreadyExists):
            await uow.c2d.add(cm("d2", "a"))
    async with hs.begin() as uow:
        pending = await uow.c2d.pending("h1", "d1", T0)
        assert [m.message_id for m in pending] == ["a", "b", "c"]
        assert pending[0].body == b"\x00payload a" and dict(pending[0].application_properties) == {"a": "b"}
        assert dict(pending[0].system_properties) == {"ack": "full"}
        assert pending[1].expires == T0 + timedelta(seconds=10)
        # Expired messages are never pending, even before `expire` deleted them.
        later = await uow.c2d.pending("h1", "d1", T0 + timedelta(seconds=10))
        assert [m.message_id for m in later] == ["a", "c"]
        assert [m.message_id for m in await uow.c2d.pending("h1", "d1", T0, after=a.seq)] == ["b", "c"]
        assert [m.message_id for m in await uow.c2d.pending("h1", "d1", T0, limit=1)] == ["a"]
        assert await uow.c2d.count("h1", "d1") == 3
    async with hs.begin() as uow:
        assert await uow.c2d.complete("h1", "d1", a.seq) is True
        assert await uow.c2d.complete("h1", "d1", a.seq) is False
        assert await uow.c2d.complete("h1", "d2", b.seq) is False  # not that device's message
        assert await uow.c2d.expire(T0 + timedelta(seconds=50)) == 1
    async with hs.begin() as uow:
        assert [m.message_id for m in await uow.c2d.pending("h1", "d1", T0)] == ["c"]
        assert await uow.c2d.purge("h1", "d2") == 1
        assert await uow.c2d.count("h1", "d2") == 0
        assert await uow.c2d.count("h1", "d1") == 1


async def test_hub_sessions_put_get_delete(store: Store) -> None:
    hs = hub_store(store)
    async with hs.begin() as uow:
        assert await uow.hub_sessions.get("h1", "d1") is None
        await uow.hub_sessions.put(HubSession("h1", "d1", (("$iothub/methods/POST/#", 1),), 3))
        await uow.hub_sessions.put(HubSession("h2", "d1", ()))
    async with hs.begin() as uow:
        got = await uow.hub_sessions.get("h1", "d1")
        assert got == HubSession("h1", "d1", (("$iothub/methods/POST/#", 1),), 3)
        await uow.hub_sessions.put(
            HubSession("h1", "d1", (("$iothub/methods/POST/#", 1), ("$iothub/twin/res/#", 0)), 4)
        )
    async with hs.begin() as uow:
        got = await uow.hub_sessions.get("h1", "d1")
        assert got is not None and got.subscriptions[1] == ("$iothub/twin/res/#", 0) and got.desired_version_sent == 4
        await uow.hub_sessions.delete("h1", "d1")
        await uow.hub_sessions.delete("h1", "nobody")
    async with hs.begin() as uow:
        assert await uow.hub_sessions.get("h1", "d1") is None
        assert await uow.hub_sessions.get("h2", "d1") == HubSession("h2", "d1", (), 0)
