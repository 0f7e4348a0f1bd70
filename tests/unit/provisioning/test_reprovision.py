"""Reprovisioning: the substatus table (pure) and what happens to hub identities (pipeline)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import KEY1, Env, sk_enrollment

from iotdps.enrollment.models import CustomAllocationDefinition, InitialTwin, ReprovisionPolicy
from iotdps.ports import WebhookResponse
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.reprovision import place

H, H2 = "hub-a.local", "hub-b.local"


def _rec(hub: str | None, substatus: Any = "initialAssignment") -> RegistrationRecord:
    return RegistrationRecord("dev-1", "assigned", "op", substatus=substatus, assigned_hub=hub, device_id="dev-1")


@pytest.mark.parametrize(
    ("current", "update", "migrate", "allocated", "hub", "substatus", "twin"),
    [
        (None, True, True, H, H, "initialAssignment", "initial"),
        (None, False, False, H, H, "initialAssignment", "initial"),
        (_rec(None), True, True, H2, H2, "initialAssignment", "initial"),
        (_rec(H), False, True, None, H, "initialAssignment", "keep"),
        (_rec(H, "deviceDataMigrated"), False, False, None, H, "deviceDataMigrated", "keep"),
        (_rec(H), True, True, H, H, "reprovisionedToInitialAssignment", "keep"),
        (_rec(H), True, True, H2, H2, "deviceDataMigrated", "migrate"),
        (_rec(H), True, False, H, H, "reprovisionedToInitialAssignment", "reset"),
        (_rec(H), True, False, H2, H2, "deviceDataReset", "initial"),
    ],
)
def test_substatus_table(current, update, migrate, allocated, hub, substatus, twin) -> None:  # type: ignore[no-untyped-def]
    placement = place(current, ReprovisionPolicy(update, migrate), allocated)
    assert (placement.hub, placement.substatus, placement.twin) == (hub, substatus, twin)


TWIN = InitialTwin({"site": "lab"}, {"interval": 5})


async def _device(env: Env, hub: str, device_id: str = "dev-1") -> Any:
    async with env.store.begin() as uow:
        return await uow.devices.get(hub, device_id)


async def _set_hubs(env: Env, *hubs: str, **settings: Any) -> None:
    await env.enroll(sk_enrollment("dev-1", iot_hubs=hubs, initial_twin=TWIN, **settings))


async def _report(env: Env, hub: str, reported: dict[str, Any]) -> None:
    from dataclasses import replace

    async with env.store.begin() as uow:
        device = await uow.devices.get(hub, "dev-1")
        await uow.devices.put(replace(device, twin=replace(device.twin, reported=reported, tags={"edited": True})))


async def test_first_then_same_hub_then_migrate() -> None:
    env = await Env().setup()
    await _set_hubs(env, H)
    first = await env.register_sas("dev-1", KEY1)
    assert first.record is not None
    assert (first.record.status, first.record.substatus, first.record.assigned_hub) == (
        "assigned",
        "initialAssignment",
        H,
    )
    device = await _device(env, H)
    assert dict(device.twin.tags) == {"site": "lab"} and dict(device.twin.desired) == {"interval": 5}
    assert device.auth.type == "sas" and device.auth.primary_key.reveal() == KEY1
    await _report(env, H, {"temp": 20})

    env.clock.current = env.clock.current.replace(hour=13)
    again = await env.register_sas("dev-1", KEY1)
    assert again.record is not None and again.record.substatus == "reprovisionedToInitialAssignment"
    assert again.record.created == first.record.created and again.record.etag != first.record.etag
    assert again.record.operation_id != first.record.operation_id

    await _set_hubs(env, H2)  # default policy: migrate
    moved = await env.register_sas("dev-1", KEY1)
    assert moved.record is not None and (moved.record.assigned_hub, moved.record.substatus) == (
        H2,
        "deviceDataMigrated",
    )
    assert await _device(env, H) is None
    new = await _device(env, H2)
    assert dict(new.twin.reported) == {"temp": 20} and dict(new.twin.tags) == {"edited": True}


async def test_reset_policies() -> None:
    env = await Env().setup()
    reset = ReprovisionPolicy(update_hub_assignment=True, migrate_device_data=False)
    await _set_hubs(env, H, reprovision_policy=reset)
    await env.register_sas("dev-1", KEY1)
    await _report(env, H, {"temp": 20})

    same = await env.register_sas("dev-1", KEY1)
    assert same.record is not None and same.record.substatus == "reprovisionedToInitialAssignment"
    assert dict((await _device(env, H)).twin.tags) == {"site": "lab"}  # tags reset to the initial twin

    await _set_hubs(env, H2, reprovision_policy=reset)
    moved = await env.register_sas("dev-1", KEY1)
    assert moved.record is not None and moved.record.substatus == "deviceDataReset"
    assert await _device(env, H) is None
    fresh = await _device(env, H2)
    assert dict(fresh.twin.reported) == {} and dict(fresh.twin.tags) == {"site": "lab"}


async def test_never_reprovision_keeps_hub_and_delete_makes_initial() -> None:
    env = await Env().setup()
    never = ReprovisionPolicy(update_hub_assignment=False, migrate_device_data=False)
    await _set_hubs(env, H, reprovision_policy=never)
    await env.register_sas("dev-1", KEY1)
    await _set_hubs(env, H2, reprovision_policy=never)
    kept = await env.register_sas("dev-1", KEY1)
    assert kept.record is not None and kept.record.assigned_hub == H

    async with env.store.begin() as uow:
        await uow.registrations.delete("dev-1")
    after = await env.register_sas("dev-1", KEY1)
    assert after.record is not None and (after.record.assigned_hub, after.record.substatus) == (H2, "initialAssignment")


class _Hook:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.bodies: list[Any] = []

    async def post_json(self, url: str, body: Any, timeout: float) -> WebhookResponse:
        self.bodies.append(body)
        return WebhookResponse(200, self.answer)


async def test_custom_webhook_twin_and_payload() -> None:
    hook = _Hook({"iotHubHostName": H2, "initialTwin": {"tags": {"from": "hook"}}, "payload": {"greeting": "hi"}})
    env = await Env(webhook=hook).setup()
    definition = CustomAllocationDefinition("https://alloc.example/api", "2021-10-01")
    await _set_hubs(env, allocation_policy="custom", custom_allocation_definition=definition)
    result = await env.register_sas("dev-1", KEY1, payload={"model": "x"})
    assert result.record is not None and result.record.assigned_hub == H2
    assert result.record.payload == {"greeting": "hi"}
    assert dict((await _device(env, H2)).twin.tags) == {"from": "hook"}
    [body] = hook.bodies
    assert body["linkedHubs"] == sorted(("hub-a.local", "hub-b.local", "hub-c.local"))
    assert body["deviceRuntimeContext"] == {"registrationId": "dev-1", "symmetricKey": {}, "payload": {"model": "x"}}
    assert body["individualEnrollment"]["attestation"] == {"type": "symmetricKey"}
    assert KEY1 not in repr(body)

    await env.register_sas("dev-1", KEY1)
    context = hook.bodies[1]["deviceRuntimeContext"]
    assert (context["currentIotHubHostName"], context["currentDeviceId"]) == (H2, "dev-1")


async def test_poll_sees_assigning_while_webhook_runs() -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    class SlowHook:
        async def post_json(self, url: str, body: Any, timeout: float) -> WebhookResponse:
            outcome = await env.service.operation_status(SCOPE_, "dev-1", "op-1")
            seen.append(str(outcome.status))
            gate.set()
            return WebhookResponse(200, {"iotHubHostName": H})

    env = await Env(webhook=SlowHook()).setup()
    definition = CustomAllocationDefinition("https://alloc.example/api", "2021-10-01")
    await _set_hubs(env, allocation_policy="custom", custom_allocation_definition=definition)
    done = await env.register_sas("dev-1", KEY1, operation_id="op-1")
    assert seen == ["assigning"] and gate.is_set()
    assert done.status == "assigned"
    assert (await env.service.operation_status(SCOPE_, "dev-1", "op-1")).status == "assigned"


SCOPE_ = "0ne00TEST01"
