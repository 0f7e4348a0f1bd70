"""Telemetry retention on every store, and the cluster tables (PostgreSQL): leases, presence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from iotdps.hub.records import TelemetryMessage
from iotdps.hub.retention import TelemetryRetention
from iotdps.ports import HubStore, Store
from iotdps.store.sql.cluster import cluster_db

from .conftest import open_backend

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class _Clock:
    def now(self) -> datetime:
        return NOW


async def _fill(store: HubStore, hub: str, device: str, ages: list[int]) -> None:
    async with store.begin() as uow:
        await uow.telemetry.add_many(
            [TelemetryMessage(hub, device, f"{device} {age}".encode(), NOW - timedelta(seconds=age)) for age in ages]
        )


async def _bodies(store: HubStore, hub: str) -> list[bytes]:
    async with store.begin() as uow:
        return [m.body for m in await uow.telemetry.list(hub, limit=1000)]


async def test_retention_by_age_and_count_per_hub(store: Store) -> None:
    hubs = cast(HubStore, store)
    await _fill(hubs, "h1", "d", [500, 400, 300, 200, 100, 0])
    await _fill(hubs, "h2", "e", [500, 0])
    by_age = TelemetryRetention(hubs, ["h1"], _Clock(), max_age=250, batch=2)
    assert await by_age.prune_once() == 3  # 500, 400, 300: in batches of 2, until none is left
    assert await _bodies(hubs, "h1") == [b"d 200", b"d 100", b"d 0"]
    assert await _bodies(hubs, "h2") == [b"e 500", b"e 0"]  # another hub's messages are its own
    by_count = TelemetryRetention(hubs, ["h1", "h2"], _Clock(), max_count=1)
    assert await by_count.prune_once() == 3
    assert await _bodies(hubs, "h1") == [b"d 0"]
    assert await _bodies(hubs, "h2") == [b"e 0"]
    assert await by_count.prune_once() == 0


@pytest.mark.postgres
async def test_leases_and_presence(request: pytest.FixtureRequest, tmp_path: object) -> None:
    store = await open_backend("postgresql", request, tmp_path)  # type: ignore[arg-type]
    try:
        db = cluster_db(store)
        assert db is not None
        await db.heartbeat("a")
        await db.heartbeat("b")
        await db.set_present("hub", "d1", "a")
        await db.set_present("hub", "d2", "b")
        assert await db.presence(30) == {("hub", "d1"): "a", ("hub", "d2"): "b"}
        # The device moved to b: a's late "absent" does not erase b's presence.
        await db.set_present("hub", "d1", "b")
        await db.set_absent("hub", "d1", "a")
        assert await db.presence(30) == {("hub", "d1"): "b", ("hub", "d2"): "b"}
        # b stops beating: once its lease (0.5 s here) runs out, its devices are not connected.
        await asyncio.sleep(0.7)
        await db.heartbeat("a")
        assert await db.live_nodes(0.5) == ["a"]
        assert await db.presence(0.5) == {}
        assert await db.reap(0.5) == 2
        assert await db.presence(30) == {}
        assert await db.get_secret("x") is None
        assert await db.put_secret_if_absent("x", "first") == "first"
        assert await db.put_secret_if_absent("x", "second") == "first"  # the first writer wins
    finally:
        await store.close()


async def test_cluster_tables_are_postgresql_only(tmp_path: object) -> None:
    from iotdps.store import open_store

    store = await open_store("memory://")
    assert cluster_db(store) is None
    await store.close()


@pytest.mark.postgres
async def test_one_node_prunes_a_hub_at_a_time(request: pytest.FixtureRequest, tmp_path: object) -> None:
    """Two nodes on one PostgreSQL: while one node's unit prunes a hub (holds its advisory
    lock), the other's retention skips that hub and deletes nothing; other hubs stay free, and
    once the first unit ends the hub can be pruned again."""
    first = await open_backend("postgresql", request, tmp_path)  # type: ignore[arg-type]
    second = await open_backend("postgresql", request, tmp_path)  # type: ignore[arg-type]
    try:
        a, b = cast(HubStore, first), cast(HubStore, second)
        await _fill(a, "h1", "d", [500, 400, 0])
        await _fill(a, "h2", "e", [500, 0])
        other_node = TelemetryRetention(b, ["h1", "h2"], _Clock(), max_age=250)
        async with a.begin() as uow:
            assert await uow.telemetry.claim_pruning("h1")
            assert await other_node.prune_once() == 1  # h2's old message; h1 is taken
            assert other_node.skipped == 1
        assert await _bodies(a, "h1") == [b"d 500", b"d 400", b"d 0"]
        assert await other_node.prune_once() == 2  # released when the unit ended
        assert await _bodies(a, "h1") == [b"d 0"]
        async with b.begin() as uow:
            assert await uow.telemetry.claim_pruning("h1")
            assert await uow.telemetry.claim_pruning("h1")  # the holder may claim again
    finally:
        await second.close()
        await first.close()


async def test_claim_pruning_on_every_store(store: Store) -> None:
    hubs = cast(HubStore, store)
    async with hubs.begin() as uow:
        assert await uow.telemetry.claim_pruning("h1") is True
