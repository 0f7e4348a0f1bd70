"""The pipeline on the real SQLite store: seed 004, reprovisioning, concurrency, atomicity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from certkit import NOW, FixedClock, seed004
from helpers import HUBS, KEY1, Env, ca_group, sk_enrollment, x509_enrollment

from iotdps.store import open_store


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = await open_store(f"sqlite:///{tmp_path / 'iotdps.db'}", clock=FixedClock(NOW))
    try:
        yield await Env(store=store).setup()
    finally:
        await store.close()


async def test_seed004_on_sqlite(env: Env) -> None:
    h = seed004()
    await env.service.upload_ca("root", h.root.pem, verified=True)
    await env.group(ca_group("all-devices", ca_ref="root"))
    await env.group(ca_group("factory-b", signing=h.b, provisioning_status="disabled"))
    await env.enroll(x509_enrollment("dev-3", h.devices["dev-3"], provisioning_status="disabled"))
    statuses = [(await env.register_x509(f"dev-{i}", h.chain(f"dev-{i}"))).status for i in range(1, 6)]
    assert statuses == ["assigned", "assigned", "disabled", "disabled", "disabled"]
    async with env.store.begin() as uow:
        record = await uow.registrations.get("dev-1")
        device = await uow.devices.get(record.assigned_hub, "dev-1")  # type: ignore[union-attr,arg-type]
    assert device is not None and device.auth.primary_thumbprints[0] == h.devices["dev-1"].sha256


async def test_reprovision_and_concurrency_on_sqlite(env: Env) -> None:
    await env.enroll(sk_enrollment("dev-1", iot_hubs=(HUBS[0],)))
    results = await asyncio.gather(*(env.register_sas("dev-1", KEY1) for _ in range(4)))
    assert sorted(str(r.record.substatus) for r in results if r.record) == [
        "initialAssignment",
        *["reprovisionedToInitialAssignment"] * 3,
    ]
    created = {r.record.created for r in results if r.record}
    assert len(created) == 1
    await env.enroll(sk_enrollment("dev-1", iot_hubs=(HUBS[1],)))
    moved = await env.register_sas("dev-1", KEY1)
    assert moved.record is not None and moved.record.substatus == "deviceDataMigrated"
    async with env.store.begin() as uow:
        assert await uow.devices.get(HUBS[0], "dev-1") is None
        assert await uow.devices.get(HUBS[1], "dev-1") is not None
