"""Seed 004's five devices: root -> A -> dev-1..3, root -> B -> dev-4..5.

Step by step the operator enables a root group, then disables B with a group of its own, then
disables dev-3 with an individual enrollment; every device's outcome is checked at every step.
"""

from __future__ import annotations

import pytest
from certkit import seed004
from helpers import Env, ca_group, x509_enrollment

from iotdps.refusals import RefusalReason

A, D = "assigned", "disabled"
NO = RefusalReason.NO_ENROLLMENT

# step -> expected (status or refusal reason) of dev-1..dev-5
EXPECTED = {
    "no enrollment": [NO, NO, NO, NO, NO],
    "root group enabled": [A, A, A, A, A],
    "B group disabled": [A, A, A, D, D],
    "dev-3 individually disabled": [A, A, D, D, D],
}


async def _outcomes(env: Env, h) -> list[object]:
    out: list[object] = []
    for i in range(1, 6):
        rid = f"dev-{i}"
        result = await env.register_x509(rid, h.chain(rid))
        out.append(result.status if result.record is not None else result.reason)
    return out


async def test_five_devices_every_step() -> None:
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("root", h.root.pem, verified=True)

    assert await _outcomes(env, h) == EXPECTED["no enrollment"]

    await env.group(ca_group("all-devices", ca_ref="root"))
    assert await _outcomes(env, h) == EXPECTED["root group enabled"]

    await env.group(ca_group("factory-b", signing=h.b, provisioning_status="disabled"))
    assert await _outcomes(env, h) == EXPECTED["B group disabled"]

    await env.enroll(x509_enrollment("dev-3", h.devices["dev-3"], provisioning_status="disabled"))
    assert await _outcomes(env, h) == EXPECTED["dev-3 individually disabled"]


async def test_refusal_words_name_the_deciding_enrollment() -> None:
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("root", h.root.pem, verified=True)
    await env.group(ca_group("all-devices", ca_ref="root"))
    await env.group(ca_group("factory-b", signing=h.b, provisioning_status="disabled"))

    result = await env.register_x509("dev-4", h.chain("dev-4"))
    assert result.reason is RefusalReason.GROUP_DISABLED
    assert result.message == "group factory-b is disabled"
    assert any("CN=B" in s and "factory-b, disabled -> refuse" in s for s in result.steps)
    assert result.record is not None and result.record.error_code == 401003
    [logged] = await env.refusals("dev-4")
    assert (logged.reason, logged.enrollment) == ("GROUP_DISABLED", "group:factory-b")

    ok = await env.register_x509("dev-1", h.chain("dev-1"))
    assert ok.record is not None and ok.record.enrollment_group_id == "all-devices"
    assert ok.steps[0] == "individual enrollment dev-1: not found"
    assert ok.steps[1].startswith("group on CN=A") and ok.steps[1].endswith(": none")
    assert "all-devices, enabled -> admit" in ok.steps[2]


@pytest.mark.parametrize("anchor", ["root", "A"])
async def test_group_above_the_tls_anchor_is_found(anchor: str) -> None:
    """OpenSSL stops at the first anchor; with A verified, the root group must still match."""
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("root", h.root.pem, verified=anchor == "root")
    await env.cas.upload_ca("A", h.a.pem, verified=anchor == "A")
    await env.group(ca_group("all-devices", ca_ref="root"))
    result = await env.register_x509("dev-2", h.chain("dev-2"))
    assert result.status == "assigned", result.message
    assert result.record is not None and result.record.enrollment_group_id == "all-devices"
