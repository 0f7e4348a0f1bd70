"""The hubs' serving leases (wiring/hub_leases.py) on every store: memory, SQLite, PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from iotdps.allocation.hubs import LinkedHub
from iotdps.config import HubConfig
from iotdps.ports import Store
from iotdps.wiring.hub_leases import LEASE, HubLeases

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def _hubs(store: Store) -> dict[str, LinkedHub]:
    async with store.begin() as uow:
        return {h.host_name: h for h in await uow.hubs.list()}


async def test_the_implicit_hub_follows_the_dps_host(store: Store) -> None:
    clock = Clock()
    first = HubLeases(store, [HubConfig("localhost")], implicit=True, now=clock)
    assert await first.claim() == []
    hub = (await _hubs(store))["localhost"]
    assert hub.implicit and hub.served_until == T0 + LEASE
    await first.stop()
    assert (await _hubs(store))["localhost"].unserved(clock.now)
    # The next start under another DPS host name unlinks the old implicit hub.
    clock.now = T0 + timedelta(minutes=5)
    second = HubLeases(store, [HubConfig("127.0.60.2")], implicit=True, now=clock)
    assert await second.claim() == []
    assert list(await _hubs(store)) == ["127.0.60.2"]


async def test_configured_hubs_lease_renew_and_report_the_unserved(store: Store) -> None:
    clock = Clock()
    async with store.begin() as uow:
        await uow.hubs.put(LinkedHub("by-hand.example", location="west"))
    node = HubLeases(store, [HubConfig("a.example", weight=4)], implicit=False, now=clock)
    unserved = await node.claim()
    assert [(u.host_name, u.served_until) for u in unserved] == [("by-hand.example", None)]
    assert "none has ever served it" in unserved[0].warning()
    clock.now = T0 + timedelta(seconds=50)
    await node.renew()
    hubs = await _hubs(store)
    assert hubs["a.example"].served_until == clock.now + LEASE and hubs["a.example"].allocation_weight == 4
    assert hubs["by-hand.example"].served_until is None and hubs["by-hand.example"].location == "west"
    await node.stop()
    # A node serving something else sees a.example as last served at the stop.
    clock.now = T0 + timedelta(minutes=2)
    other = HubLeases(store, [HubConfig("b.example")], implicit=False, now=clock)
    unserved = {u.host_name: u for u in await other.claim()}
    assert unserved["a.example"].served_until == T0 + timedelta(seconds=50)
    assert "allocation skips it" in unserved["a.example"].warning()
    # Hubs that were configured (not implicit) stay linked: only the operator unlinks them.
    assert set(await _hubs(store)) == {"a.example", "b.example", "by-hand.example"}
