"""Registration ids are case-insensitive (iotdps.ids); device ids are not (the pipeline's rules)."""

from __future__ import annotations

from certkit import issue
from helpers import KEY1, Env, ca_group, sk_enrollment, sk_group, x509_enrollment

from iotdps.enrollment.cas import CaCertificate
from iotdps.pki.encoding import certificate_info
from iotdps.sas import derive_device_key


async def _devices(env: Env, hub: str) -> list[str]:
    async with env.store.begin() as uow:
        return [d.device_id for d in (await uow.devices.list(hub)).items]


async def test_individual_enrollment_found_whatever_the_case() -> None:
    env = await Env().setup()
    await env.enroll(sk_enrollment("Dev-A"))
    outcome = await env.register_sas("dev-a", KEY1)
    assert outcome.record is not None and outcome.record.status == "assigned"
    assert outcome.record.device_id == "Dev-A"  # the enrollment's spelling
    again = await env.register_sas("DEV-A", KEY1)
    assert again.record is not None and again.record.registration_id == "dev-a"  # the first spelling
    assert again.record.substatus == "reprovisionedToInitialAssignment"
    hub = again.record.assigned_hub
    assert hub is not None and [d for d in await _devices(env, hub) if d.lower() == "dev-a"] == ["Dev-A"]


async def test_group_device_keeps_its_first_spelling() -> None:
    env = await Env().setup()
    await env.group(sk_group("fleet"))
    first = await env.register_sas("GDEV-1", derive_device_key(KEY1, "GDEV-1"))
    second = await env.register_sas("gdev-1", derive_device_key(KEY1, "gdev-1"))
    assert first.record is not None and second.record is not None
    assert (second.record.registration_id, second.record.device_id) == ("GDEV-1", "GDEV-1")
    assert second.record.created == first.record.created
    # The key derived from one spelling is not the other's.
    wrong = await env.register_sas("gdev-1", derive_device_key(KEY1, "GDEV-1"))
    assert wrong.record is None and wrong.reason is not None


async def test_x509_device_id_is_the_cn_as_written() -> None:
    env = await Env().setup()
    root = issue("root", ca=True)
    async with env.store.begin() as uow:
        info = certificate_info(root.cert)
        await uow.cas.put(CaCertificate("root", root.pem, info, is_verified=True))
    await env.group(ca_group("line", ca_ref="root"))
    leaf = issue("XDEV-1", root)
    outcome = await env.register_x509("xdev-1", [leaf.cert])
    assert outcome.record is not None and outcome.record.status == "assigned", outcome.message
    assert outcome.record.device_id == "XDEV-1"
    # An individual enrollment's CN check ignores case too.
    solo = issue("Solo-1", root)
    await env.enroll(x509_enrollment("solo-1", solo))
    assert (await env.register_x509("SOLO-1", [solo.cert])).record is not None
