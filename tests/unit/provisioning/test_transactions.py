"""One registration is one transaction; concurrent registrations end in one consistent record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import HUBS, KEY1, Env, sk_enrollment

from iotdps.errors import NotFound, StoreError
from iotdps.ports import UnitOfWork


class _BrokenDevices:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, *args: Any, **kw: Any) -> Any:
        raise StoreError("database went away")


class _BrokenUow:
    def __init__(self, inner: UnitOfWork) -> None:
        self._inner = inner
        self.devices = _BrokenDevices(inner.devices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _FailingWrites:
    """The real MemoryStore, with the hub-identity write failing like a dropped connection."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Any]:
        async with self.inner.begin() as uow:
            yield _BrokenUow(uow)

    def read(self) -> Any:
        return self.inner.read()

    async def close(self) -> None:
        await self.inner.close()


async def test_a_failure_mid_registration_leaves_nothing_half_written() -> None:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    env.service.store = _FailingWrites(env.store)
    with pytest.raises(StoreError):
        await env.register_sas("dev-1", KEY1)
    async with env.store.begin() as uow:
        assert await uow.registrations.get("dev-1") is None
        for hub in HUBS:
            assert (await uow.devices.list(hub)).items == []


async def test_concurrent_registrations_of_one_id_end_in_one_record() -> None:
    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    results = await asyncio.gather(*(env.register_sas("dev-1", KEY1) for _ in range(8)))
    assert all(r.status == "assigned" for r in results)
    async with env.store.begin() as uow:
        record = await uow.registrations.get("dev-1")
        devices = [d for hub in HUBS for d in (await uow.devices.list(hub)).items]
    assert record is not None and record.operation_id in {r.operation_id for r in results}
    assert [(d.hub, d.device_id) for d in devices] == [(record.assigned_hub, "dev-1")]
    substatuses = sorted(str(r.record.substatus) for r in results if r.record)
    assert substatuses.count("initialAssignment") == 1


async def test_operation_status_needs_the_right_operation_and_credential() -> None:
    from certkit import NOW
    from helpers import SCOPE

    from iotdps.evidence import SasCredential
    from iotdps.refusals import RefusalReason
    from iotdps.sas import make_sas_token
    from iotdps.secret import Secret

    env = await Env().setup()
    await env.enroll(sk_enrollment("dev-1"))
    done = await env.register_sas("dev-1", KEY1)
    assert done.operation_id is not None
    with pytest.raises(NotFound):
        await env.service.operation_status(SCOPE, "dev-1", "5.other")
    good = SasCredential(Secret(make_sas_token(SCOPE, "dev-1", KEY1, int(NOW.timestamp()) + 3600)))
    polled = await env.service.operation_status(SCOPE, "dev-1", done.operation_id, good)
    assert polled.operation_json()["registrationState"]["assignedHub"] == done.record.assigned_hub  # type: ignore[union-attr]
    bad = SasCredential(
        Secret(make_sas_token(SCOPE, "dev-1", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB", int(NOW.timestamp()) + 3600))
    )
    refused = await env.service.operation_status(SCOPE, "dev-1", done.operation_id, bad)
    assert refused.record is None and refused.reason is RefusalReason.SAS_BAD_SIGNATURE
    status = await env.service.registration_status(SCOPE, "dev-1", good)
    assert status.record is not None and status.record.status == "assigned"
