"""What an enrollment's certificate slots accept (provisioning.admin)."""

from __future__ import annotations

import pytest
from certkit import issue
from helpers import x509_enrollment

from iotdps.audit import Actor
from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    EnrollmentGroup,
    IndividualEnrollment,
    X509Attestation,
)
from iotdps.errors import InvalidInput
from iotdps.provisioning.admin import put_enrollment, put_group
from iotdps.store import MemoryStore

TEST_ACTOR = Actor("local", "test")


async def test_a_slot_holds_exactly_one_certificate() -> None:
    store = MemoryStore()
    root = issue("root", ca=True)
    line = issue("line-a", root, ca=True)
    leaf = issue("dev-1", line)
    bundle = leaf.pem + line.pem
    enrollment = x509_enrollment("dev-1", leaf)
    slot = CertificateSlot(bundle)
    with pytest.raises(InvalidInput, match=r"clientCertificates\.primary holds 2 certificates; .*exactly one"):
        await put_enrollment(
            store, IndividualEnrollment("dev-1", Attestation("x509", X509Attestation((slot, None)))), actor=TEST_ACTOR
        )
    group = EnrollmentGroup("g", Attestation("x509", X509Attestation(signing_certificates=(slot, None))))
    with pytest.raises(InvalidInput, match=r"signingCertificates\.primary holds 2 certificates"):
        await put_group(store, group, actor=TEST_ACTOR)
    assert (await put_enrollment(store, enrollment, actor=TEST_ACTOR)).registration_id == "dev-1"


async def test_an_individual_enrollment_takes_no_ca_certificate() -> None:
    store = MemoryStore()
    ca = issue("line-a", ca=True)
    with pytest.raises(InvalidInput, match=r"CN=line-a .* is a CA certificate"):
        await put_enrollment(store, x509_enrollment("line-a", ca), actor=TEST_ACTOR)
    async with store.begin() as uow:
        assert await uow.enrollments.get("line-a") is None
