"""Cloud-side operations with no live connections (what the CLI does when no server runs on the
data dir), against a real SQLite store: the store changes, what needs a connection says so, and
host names are matched as the hub serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iotdps.errors import InvalidInput, NotFound, Throttled
from iotdps.hub.c2d import MAX_C2D_QUEUE
from iotdps.hub.cloud import offline_operations
from iotdps.hub.errors import DeviceNotConnected
from iotdps.hub.names import HubNames
from iotdps.ports import Store
from iotdps.store import open_store
from iotdps_testing.hubkit import put_sas_device

HUB = "Hub-1.example"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    await put_sas_device(store, HUB, "dev-1")
    yield store
    await store.close()


def test_hub_names_answer_in_the_configured_spelling() -> None:
    names = HubNames(["Hub-1.example", "hub-2.example"])
    assert names.find("HUB-1.EXAMPLE") == "Hub-1.example"
    assert names.find("hub-3.example") is None
    with pytest.raises(NotFound, match=r"hub-3\.example is not served here"):
        names.canonical("hub-3.example")
    with pytest.raises(InvalidInput, match="at least one hub host name"):
        HubNames([])


async def test_offline_desired_patch_is_stored_and_tags_merge(store: Store) -> None:
    ops = offline_operations(store, HUB)
    twin = await ops.update_desired("hub-1.EXAMPLE", "dev-1", {"rate": 5}, tags={"site": "a"})
    assert (twin.desired, twin.desired_version, dict(twin.tags)) == ({"rate": 5}, 2, {"site": "a"})
    async with store.begin() as uow:
        device = await uow.devices.get(HUB, "dev-1")
    assert device is not None and device.twin.desired == {"rate": 5}


async def test_offline_c2d_is_queued_until_the_queue_is_full(store: Store) -> None:
    ops = offline_operations(store, HUB)
    message_id = await ops.send_c2d(HUB, "dev-1", b"hello", {"$.mid": "m-1", "k": "v"}, 60)
    assert message_id == "m-1"
    for _ in range(MAX_C2D_QUEUE - 1):
        await ops.send_c2d(HUB, "dev-1", b"more", {}, None)
    with pytest.raises(Throttled, match="queue of device dev-1 is full"):
        await ops.send_c2d(HUB, "dev-1", b"one too many", {}, None)
    with pytest.raises(NotFound, match="device ghost not found"):
        await ops.send_c2d(HUB, "ghost", b"x", {}, None)
    with pytest.raises(InvalidInput, match="cannot be set"):
        await ops.send_c2d(HUB, "dev-1", b"x", {"$.to": "/devices/other"}, None)


async def test_offline_what_needs_a_connection_says_so(store: Store) -> None:
    ops = offline_operations(store, HUB)
    assert not ops.is_connected(HUB, "dev-1")
    assert ops.connected_count(HUB) == 0 and ops.connection_count == 0
    assert not ops.disconnect(HUB, "dev-1")
    with pytest.raises(DeviceNotConnected, match=r"dev-1 is not connected to Hub-1\.example"):
        await ops.invoke_method(HUB, "dev-1", "reboot", None, 5)
    with pytest.raises(InvalidInput, match="method name"):
        await ops.invoke_method(HUB, "dev-1", "", None, 5)
    with pytest.raises(NotFound, match="not served here"):
        ops.is_connected("other.example", "dev-1")
