"""The hubs' serving leases (wiring/hub_leases.py) on every store: memory, SQLite, PostgreSQL.

Several nodes serving one hub each hold a lease of their own: a clean stop removes only the
stopping node's, a node killed outright leaves its lease to run out."""

from __future__ import annotations

import asyncio
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
    first = HubLeases(store, [HubConfig("localhost")], implicit=True, node="n1", now=clock)
    assert await first.claim() == []
    hub = (await _hubs(store))["localhost"]
    assert hub.implicit and hub.served_until == T0 + LEASE
    await first.stop()
    assert (await _hubs(store))["localhost"].unserved(clock.now)
    # The next start under another DPS host name unlinks the old implicit hub.
    clock.now = T0 + timedelta(minutes=5)
    second = HubLeases(store, [HubConfig("127.0.60.2")], implicit=True, node="n2", now=clock)
    assert await second.claim() == []
    assert list(await _hubs(store)) == ["127.0.60.2"]


async def test_configured_hubs_lease_renew_and_report_the_unserved(store: Store) -> None:
    clock = Clock()
    async with store.begin() as uow:
        await uow.hubs.put(LinkedHub("by-hand.example", location="west"))
    node = HubLeases(store, [HubConfig("a.example", weight=4)], implicit=False, node="n1", now=clock)
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
    other = HubLeases(store, [HubConfig("b.example")], implicit=False, node="n2", now=clock)
    unserved = {u.host_name: u for u in await other.claim()}
    assert unserved["a.example"].served_until == T0 + timedelta(seconds=50)
    assert "allocation skips it" in unserved["a.example"].warning()
    # Hubs that were configured (not implicit) stay linked: only the operator unlinks them.
    assert set(await _hubs(store)) == {"a.example", "b.example", "by-hand.example"}


def _nodes(hub: LinkedHub) -> list[str]:
    return [node for node, _ in hub.served_by]


async def test_one_of_two_nodes_stops_and_the_hub_stays_served(store: Store) -> None:
    clock = Clock()
    a = HubLeases(store, [HubConfig("shared.example")], implicit=True, node="node-a", now=clock)
    b = HubLeases(store, [HubConfig("shared.example")], implicit=True, node="node-b", now=clock)
    assert await a.claim() == []
    clock.now = T0 + timedelta(seconds=5)
    assert await b.claim() == []
    hub = (await _hubs(store))["shared.example"]
    assert hub.served_by == (("node-a", T0 + LEASE), ("node-b", clock.now + LEASE))
    assert hub.served_until == clock.now + LEASE and hub.serving_nodes(clock.now) == ("node-a", "node-b")

    clock.now = T0 + timedelta(seconds=10)
    await a.stop()
    hub = (await _hubs(store))["shared.example"]
    # Node b's lease is untouched by a's stop: still served, by b alone.
    assert _nodes(hub) == ["node-b"] and hub.served_until == T0 + timedelta(seconds=5) + LEASE
    assert not hub.unserved(clock.now)
    clock.now = T0 + timedelta(seconds=25)
    await b.renew()
    assert (await _hubs(store))["shared.example"].served_by == (("node-b", clock.now + LEASE),)

    clock.now = T0 + timedelta(seconds=30)
    await b.stop()
    hub = (await _hubs(store))["shared.example"]
    # The last node stopped: unserved at once, and since when.
    assert hub.served_by == () and hub.served_until == clock.now and hub.unserved(clock.now)


async def test_a_killed_nodes_lease_runs_out_and_is_dropped(store: Store) -> None:
    clock = Clock()
    a = HubLeases(store, [HubConfig("shared.example")], implicit=False, node="node-a", now=clock)
    b = HubLeases(store, [HubConfig("shared.example")], implicit=False, node="node-b", now=clock)
    await a.claim()
    await b.claim()
    # a is killed: it never stops. b's clean stop leaves a's lease to run its course.
    clock.now = T0 + timedelta(seconds=10)
    await b.stop()
    hub = (await _hubs(store))["shared.example"]
    assert _nodes(hub) == ["node-a"] and hub.served_until == T0 + LEASE and not hub.unserved(clock.now)
    assert hub.unserved(T0 + LEASE)
    # A node writing its lease after a's ran out drops it: the entries do not pile up.
    clock.now = T0 + LEASE + timedelta(seconds=1)
    await b.claim()
    assert _nodes((await _hubs(store))["shared.example"]) == ["node-b"]
    # A node that restarts under the same id has one lease, not two.
    await b.claim()
    assert _nodes((await _hubs(store))["shared.example"]) == ["node-b"]


async def test_concurrent_lease_writes_lose_no_node(store: Store) -> None:
    """Two nodes writing their leases on one hub at the same moment (concurrent transactions on
    PostgreSQL): each reads the row under its lock, so neither writes back what it read before
    the other's write."""
    clock = Clock()
    nodes = [HubLeases(store, [HubConfig("shared.example")], implicit=True, node=f"n{i}", now=clock) for i in range(4)]
    await asyncio.gather(*(n.claim() for n in nodes))
    assert _nodes((await _hubs(store))["shared.example"]) == ["n0", "n1", "n2", "n3"]
    for _ in range(3):
        await asyncio.gather(nodes[0].stop(), *(n.renew() for n in nodes[1:]))
        assert _nodes((await _hubs(store))["shared.example"]) == ["n1", "n2", "n3"]
        await asyncio.gather(nodes[0].claim(), *(n.renew() for n in nodes[1:]))
        assert _nodes((await _hubs(store))["shared.example"]) == ["n0", "n1", "n2", "n3"]


async def test_nodes_listing_their_hubs_in_another_order_do_not_deadlock(store: Store) -> None:
    """Each write locks its hubs in name order, whatever the order of the node's [[hubs]]: on
    PostgreSQL two nodes locking x then y and y then x at once would deadlock, and one
    of them would fail its start or its renewal."""
    clock = Clock()
    names = ["x.example", "y.example"]
    a = HubLeases(store, [HubConfig(n) for n in names], implicit=False, node="node-a", now=clock)
    b = HubLeases(store, [HubConfig(n) for n in reversed(names)], implicit=False, node="node-b", now=clock)
    await asyncio.gather(a.claim(), b.claim())
    for _ in range(5):
        await asyncio.gather(a.renew(), b.renew())
    hubs = await _hubs(store)
    assert [_nodes(hubs[n]) for n in names] == [["node-a", "node-b"]] * 2
