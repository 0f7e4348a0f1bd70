"""Revocation in the provisioning core: CRLs held per uploaded CA, checked on upload, enforced on
registration (a revoked line, one revoked device, a CA above the anchor), shown on records.

seed 004: root -> A -> dev-1..3 (line 1), root -> B -> dev-4..5 (line 2); the root is verified,
A and B are uploaded (unverified) so that their CRLs, and the root's, can be held.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from certkit import NOW, Issued, issue, seed004
from helpers import Env, ca_group

from iotdps.errors import InvalidInput
from iotdps.pki import Issuer
from iotdps.pki.revocation import RevokedEntry, build_crl, crl_pem
from iotdps.provisioning.explain import explain_registration
from iotdps.refusals import DEVICE_ANSWERS, REVOKED_RECORD, RefusalReason


def crl_of(ca: Issued, *revoked: Issued, number: int = 1, days: int = 7, when=NOW) -> str:  # type: ignore[no-untyped-def]
    issuer = Issuer(ca.cert, ca.key, name="x")
    entries = [RevokedEntry(r.cert.serial_number, when - timedelta(hours=1), "keyCompromise") for r in revoked]
    return crl_pem(
        build_crl(
            issuer,
            entries,
            number=number,
            this_update=when - timedelta(hours=1),
            next_update=when + timedelta(days=days),
        )
    )


async def world():  # type: ignore[no-untyped-def]
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("root", h.root.pem, verified=True)
    await env.cas.upload_ca("A", h.a.pem)
    await env.cas.upload_ca("B", h.b.pem)
    await env.group(ca_group("fleet", ca_ref="root"))
    return env, h


async def test_revoking_line_1_refuses_its_devices_and_not_line_2s() -> None:
    env, h = await world()
    assert (await env.register_x509("dev-1", h.chain("dev-1"))).record.status == "assigned"  # type: ignore[union-attr]
    await env.cas.upload_crl("root", crl_of(h.root, h.a))
    for dev in ("dev-1", "dev-2", "dev-3"):
        outcome = await env.register_x509(dev, h.chain(dev))
        assert outcome.reason is RefusalReason.CERT_REVOKED, outcome.message
        assert "CN=A" in outcome.message and "revoked by CA root" in outcome.message
        assert outcome.answer == DEVICE_ANSWERS[RefusalReason.CERT_REVOKED]
    for dev in ("dev-4", "dev-5"):
        assert (await env.register_x509(dev, h.chain(dev))).record.status == "assigned"  # type: ignore[union-attr]
    # dev-1 had registered before: its record shows the revocation.
    async with env.store.begin() as uow:
        record = await uow.registrations.get("dev-1")
        never = await uow.registrations.get("dev-2")
    assert record is not None and record.status == "disabled" and record.error_code == REVOKED_RECORD[1]
    assert record.error_message == "Certificate revoked"
    assert never is None
    logged = await env.refusals("dev-2")
    assert logged[0].reason == "CERT_REVOKED"


async def test_revoking_one_device_refuses_only_it() -> None:
    env, h = await world()
    await env.cas.upload_crl("A", crl_of(h.a, h.devices["dev-2"]))
    refused = await env.register_x509("dev-2", h.chain("dev-2"))
    assert refused.reason is RefusalReason.CERT_REVOKED
    assert "CN=dev-2" in refused.message and "keyCompromise" in refused.message
    for dev in ("dev-1", "dev-3", "dev-4"):
        assert (await env.register_x509(dev, h.chain(dev))).reason is None


async def test_a_ca_above_the_trust_anchor_revoked_takes_its_line_along() -> None:
    # A itself is the verified anchor: the handshake's path stops at A, yet the root revoked A.
    h = seed004()
    env = await Env().setup()
    await env.cas.upload_ca("root", h.root.pem)
    await env.cas.upload_ca("A", h.a.pem, verified=True)
    await env.group(ca_group("line1", ca_ref="A"))
    assert (await env.register_x509("dev-1", h.chain("dev-1"))).reason is None
    sub = issue("A-sub", h.a, ca=True)  # a CA under A, uploaded: under revoked A too
    await env.cas.upload_ca("A-sub", sub.pem, verified=True)
    await env.cas.upload_crl("root", crl_of(h.root, h.a))
    outcome = await env.register_x509("dev-1", h.chain("dev-1"))
    assert outcome.reason is RefusalReason.CERT_REVOKED, outcome.message


async def test_explain_says_cert_revoked() -> None:
    env, h = await world()
    await env.cas.upload_crl("A", crl_of(h.a, h.devices["dev-1"]))
    from iotdps.attestation.x509 import evidence_from_chain
    from iotdps.provisioning.trust import trust_anchors

    evidence = evidence_from_chain(h.chain("dev-1"), await trust_anchors(env.store), NOW)
    report = await explain_registration(env.service, "dev-1", evidence)
    text = "\n".join(report)
    assert "CERT_REVOKED" in text and "CN=dev-1" in text


async def test_a_crl_signed_by_another_key_is_refused() -> None:
    env, h = await world()
    impostor = issue("A", ca=True)  # same name, another key
    with pytest.raises(InvalidInput, match="not signed by the key of CN=A"):
        await env.cas.upload_crl("A", crl_of(impostor, h.devices["dev-1"]))
    with pytest.raises(InvalidInput, match="issued by CN=B, not by CN=A"):
        await env.cas.upload_crl("A", crl_of(h.b))
    async with env.store.begin() as uow:
        ca = await uow.cas.get("A")
    assert ca is not None and ca.crl is None


async def test_an_expired_crl_is_reported_and_an_older_one_refused() -> None:
    env, h = await world()
    with pytest.raises(InvalidInput, match="expired at"):
        await env.cas.upload_crl("A", crl_of(h.a, when=NOW - timedelta(days=30)))
    await env.cas.upload_crl("A", crl_of(h.a, h.devices["dev-1"], number=5))
    with pytest.raises(InvalidInput, match="older than the one held"):
        await env.cas.upload_crl("A", crl_of(h.a, number=4))
    with pytest.raises(InvalidInput, match="not a CRL"):
        await env.cas.upload_crl("A", "garbage")


async def test_a_held_crl_past_its_next_update_is_still_enforced_and_reported() -> None:
    from iotdps.provisioning.trust import current_revocations

    env, h = await world()
    await env.cas.upload_crl("A", crl_of(h.a, h.devices["dev-1"], days=1))
    env.clock.now = lambda: NOW + timedelta(days=3)  # type: ignore[method-assign]
    revoked, expired = await current_revocations(env.store, env.clock.now())
    assert expired == ["A"] and len(revoked) == 1


async def test_reuploading_the_same_ca_keeps_its_crl_and_a_new_certificate_drops_it() -> None:
    env, h = await world()
    await env.cas.upload_crl("A", crl_of(h.a, h.devices["dev-1"]))
    again = await env.cas.upload_ca("A", h.a.pem)
    assert again.crl is not None and again.to_json()["properties"]["crl"]["revokedCount"] == 1
    other = await env.cas.upload_ca("A", issue("A2", h.root, ca=True).pem)
    assert other.crl is None
