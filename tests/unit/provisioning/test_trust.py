"""What the TLS trust store takes from uploaded CAs and enrollments (provisioning.trust)."""

from __future__ import annotations

from certkit import issue

from iotdps.enrollment.models import Attestation, CertificateSlot, IndividualEnrollment, X509Attestation
from iotdps.pki import certs
from iotdps.provisioning.trust import trust_anchors
from iotdps.store import MemoryStore


async def test_trust_anchors_take_one_device_certificate_per_slot() -> None:
    store = MemoryStore()
    line = issue("line-a", issue("root", ca=True), ca=True)
    leaf = issue("dev-1", line)
    # Records as an older version could have stored them, written past the admin checks.
    async with store.begin() as uow:
        for rid, pem in (("dev-1", leaf.pem + line.pem), ("line-a", line.pem)):
            att = Attestation("x509", X509Attestation((CertificateSlot(pem), None)))
            await uow.enrollments.put(IndividualEnrollment(rid, att))
    anchors = await trust_anchors(store)
    assert [certs.common_name(c) for c in anchors] == ["dev-1"]
