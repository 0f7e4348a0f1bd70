"""The pipeline on the real SQLite store: seed 004, reprovisioning, concurrency, atomicity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from certkit import NOW, FixedClock, seed004, tls_evidence
from helpers import HUBS, KEY1, SCOPE, Env, ca_group, sk_enrollment, x509_enrollment

from iotdps.provisioning.registration import RegistrationRequest
from iotdps.refusals import RefusalReason
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
    await env.cas.upload_ca("root", h.root.pem, verified=True)
    await env.group(ca_group("all-devices", ca_ref="root"))
    await env.group(ca_group("factory-b", signing=h.b, provisioning_status="disabled"))
    await env.enroll(x509_enrollment("dev-3", h.devices["dev-3"], provisioning_status="disabled"))
    statuses = [(await env.register_x509(f"dev-{i}", h.chain(f"dev-{i}"))).status for i in range(1, 6)]
    assert statuses == ["assigned", "assigned", "disabled", "disabled", "disabled"]
    async with env.store.begin() as uow:
        record = await uow.registrations.get("dev-1")
        device = await uow.devices.get(record.assigned_hub, "dev-1")  # type: ignore[union-attr,arg-type]
    assert device is not None and device.auth.primary_thumbprints[0] == h.devices["dev-1"].sha256


async def test_a_lines_remembered_chain_follows_group_and_ca_changes(env: Env) -> None:
    """Devices of one line share the CA part of their chain, whose precedence steps the store
    remembers between registrations; every change to a group or a CA must still be seen."""
    h = seed004()
    await env.cas.upload_ca("root", h.root.pem, verified=True)
    await env.group(ca_group("factory-a", signing=h.a))
    assert (await env.register_x509("dev-1", h.chain("dev-1"))).status == "assigned"
    assert (await env.register_x509("dev-2", h.chain("dev-2"))).status == "assigned"  # from the cache
    await env.group(ca_group("factory-a", signing=h.a, provisioning_status="disabled"))
    assert (await env.register_x509("dev-3", h.chain("dev-3"))).status == "disabled"
    async with env.store.begin() as uow:
        await uow.groups.delete("factory-a")
    gone = await env.register_x509("dev-3", h.chain("dev-3"))
    assert gone.record is None and gone.reason is not None and gone.reason is RefusalReason.NO_ENROLLMENT
    await env.group(ca_group("all-devices", ca_ref="root"))
    assert (await env.register_x509("dev-3", h.chain("dev-3"))).status == "assigned"
    # The CA loses its verification. A TLS trust store built before that still verifies the
    # chain (it is reloaded a moment later): the remembered steps must not admit the device.
    stale = await tls_evidence(env.store, h.chain("dev-1"), NOW)  # line A: remembered
    assert stale.verified is not None
    async with env.store.begin() as uow:
        ca = await uow.cas.get("root")
        assert ca is not None
        await uow.cas.put(replace(ca, is_verified=False))
    refused = await env.service.register(RegistrationRequest(SCOPE, "dev-1", stale))
    assert refused.record is None and refused.reason is RefusalReason.CA_NOT_VERIFIED


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
