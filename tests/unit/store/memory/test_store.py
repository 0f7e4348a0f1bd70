"""Unit tests of the in-memory store; the full behaviour is held by tests/contract."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import pytest

from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import Attestation, IndividualEnrollment, SymmetricKeyAttestation
from iotdps.errors import NotFound, PreconditionFailed, StoreError
from iotdps.pki.verification import code_matches, hash_code
from iotdps.ports import Refusal
from iotdps.provisioning.records import RegistrationRecord
from iotdps.secret import Secret
from iotdps.store import MemoryStore, open_store


class StepClock:
    def __init__(self) -> None:
        self.t = datetime(2024, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def sym_enrollment(rid: str) -> IndividualEnrollment:
    key = base64.b64encode(b"k" * 32).decode()
    return IndividualEnrollment(
        rid, Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(key)))
    )


async def test_put_get_keeps_keys_and_stamps() -> None:
    store = MemoryStore(clock=StepClock())
    async with store.begin() as uow:
        first = await uow.enrollments.put(sym_enrollment("dev-1"))
    async with store.begin() as uow:
        again = await uow.enrollments.put(sym_enrollment("dev-1"), if_match=first.etag)
        got = await uow.enrollments.get("dev-1")
    assert got == again
    assert again.created == first.created and again.updated is not None and first.updated is not None
    assert again.updated > first.updated and again.etag != first.etag
    assert got.attestation.symmetric_key is not None
    assert got.attestation.symmetric_key.keys()[0] == base64.b64encode(b"k" * 32).decode()


async def test_etag_mismatch_and_missing() -> None:
    store = MemoryStore()
    async with store.begin() as uow:
        await uow.enrollments.put(sym_enrollment("dev-1"))
        with pytest.raises(PreconditionFailed):
            await uow.enrollments.put(sym_enrollment("dev-1"), if_match="nope")
        with pytest.raises(PreconditionFailed):
            await uow.enrollments.put(sym_enrollment("dev-2"), if_match="*")
        with pytest.raises(NotFound):
            await uow.enrollments.delete("dev-2")


async def test_rollback_discards_every_write() -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError):
        async with store.begin() as uow:
            await uow.enrollments.put(sym_enrollment("dev-1"))
            await uow.registrations.put(RegistrationRecord("dev-1", "assigned", "op"))
            await uow.refusals.add(Refusal("dev-1", "x", "y", None, datetime.now(UTC)))
            raise RuntimeError("boom")
    async with store.begin() as uow:
        assert await uow.enrollments.get("dev-1") is None
        assert await uow.registrations.get("dev-1") is None
        assert await uow.refusals.list() == []


async def test_transactions_serialise() -> None:
    store = MemoryStore()
    order: list[str] = []

    async def worker(name: str) -> None:
        async with store.begin():
            order.append(f"{name}-in")
            await asyncio.sleep(0.01)
            order.append(f"{name}-out")

    await asyncio.gather(worker("a"), worker("b"))
    assert order in (["a-in", "a-out", "b-in", "b-out"], ["b-in", "b-out", "a-in", "a-out"])


async def test_uow_unusable_after_the_block_and_store_closed() -> None:
    store = await open_store("memory://")
    async with store.begin() as uow:
        pass
    with pytest.raises(StoreError):
        await uow.enrollments.get("x")
    await store.close()
    with pytest.raises(StoreError):
        async with store.begin():
            pass


async def test_ca_verification_code_is_stored_hashed() -> None:
    store = MemoryStore()
    ca = CaCertificate("root", "PEM", {"sha256Thumbprint": "ab"}, verification_code=Secret("CODE123"))
    async with store.begin() as uow:
        stored = await uow.cas.put(ca)
        by_thumb = await uow.cas.get_by_thumbprint("AB")
    assert stored.verification_code is not None
    assert stored.verification_code.reveal() == hash_code("CODE123")
    assert code_matches(stored.verification_code, "CODE123")
    assert not code_matches(stored.verification_code, "CODE124")
    # The hash itself is not the code.
    assert not code_matches(stored.verification_code, stored.verification_code.reveal())
    assert by_thumb is not None and by_thumb.name == "root"
