"""Store contract suite: one behaviour for the memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    CustomAllocationDefinition,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
    InitialTwin,
    ReprovisionPolicy,
    SymmetricKeyAttestation,
    X509Attestation,
)
from iotdps.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed, StoreError
from iotdps.hub.devices import DeviceAuth, DeviceIdentity, Twin
from iotdps.pki.verification import code_matches
from iotdps.ports import Page, Refusal, Store, UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.secret import Secret
from iotdps.store import open_store

from .conftest import open_backend


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha512(seed.encode()).digest()).decode()


def thumb(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest().upper()


def sym_attestation(seed: str) -> Attestation:
    return Attestation(
        "symmetricKey",
        symmetric_key=SymmetricKeyAttestation(Secret(key(seed + "/1")), Secret(key(seed + "/2"))),
    )


def sym_enrollment(rid: str) -> IndividualEnrollment:
    return IndividualEnrollment(rid, sym_attestation(rid))


def x509_enrollment(rid: str) -> IndividualEnrollment:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    slot = CertificateSlot(pem, {"sha256Thumbprint": thumb(rid)})
    return IndividualEnrollment(rid, Attestation("x509", x509=X509Attestation(client_certificates=(slot, None))))


def sym_group(gid: str) -> EnrollmentGroup:
    return EnrollmentGroup(gid, sym_attestation(gid))


def signing_group(gid: str, primary: str, secondary: str | None = None) -> EnrollmentGroup:
    def slot(seed: str) -> CertificateSlot:
        return CertificateSlot("PEM " + seed, {"sha256Thumbprint": thumb(seed), "subjectName": "CN=" + seed})

    x509 = X509Attestation(signing_certificates=(slot(primary), slot(secondary) if secondary else None))
    return EnrollmentGroup(gid, Attestation("x509", x509=x509))


def ca_ref_group(gid: str, primary: str, secondary: str | None = None) -> EnrollmentGroup:
    return EnrollmentGroup(gid, Attestation("x509", x509=X509Attestation(ca_references=(primary, secondary))))


def ca(name: str, code: str | None = None) -> CaCertificate:
    return CaCertificate(
        name,
        "PEM " + name,
        {"sha256Thumbprint": thumb(name), "subjectName": "CN=" + name},
        verification_code=Secret(code) if code else None,
    )


def registration(rid: str, group: str | None = None, status: str = "assigned") -> RegistrationRecord:
    return RegistrationRecord(
        rid,
        status,  # type: ignore[arg-type]
        operation_id="op-" + rid,
        substatus="initialAssignment",
        assigned_hub="hub1.example",
        device_id=rid,
        payload={"nested": {"n": 1, "list": [1, "two", None]}},
        attestation_type="symmetricKey",
        enrollment_group_id=group,
    )


def device(hub: str, device_id: str) -> DeviceIdentity:
    return DeviceIdentity(
        hub,
        device_id,
        DeviceAuth("sas", Secret(key(device_id + "/p")), Secret(key(device_id + "/s"))),
        twin=Twin(tags={"site": "a"}, desired={"rate": 5}, reported={"fw": "1.0"}, desired_version=3),
        registration_id=device_id,
    )


# --------------------------------------------------------------------------- CRUD and etags


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[str], Any]
    repo: Callable[[UnitOfWork], Any]
    key: Callable[[Any], tuple[str, ...]]


KINDS = [
    Kind("enrollment", sym_enrollment, lambda u: u.enrollments, lambda r: (r.registration_id,)),
    Kind("group", sym_group, lambda u: u.groups, lambda r: (r.enrollment_group_id,)),
    Kind("ca", ca, lambda u: u.cas, lambda r: (r.name,)),
    Kind("registration", registration, lambda u: u.registrations, lambda r: (r.registration_id,)),
    Kind("device", lambda i: device("hub1.example", i), lambda u: u.devices, lambda r: (r.hub, r.device_id)),
]


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_crud_and_etag_rules(store: Store, kind: Kind) -> None:
    record = kind.make("dev-1")
    key_args = kind.key(record)
    async with store.begin() as uow:
        assert await kind.repo(uow).get(*key_args) is None
        first = await kind.repo(uow).put(record)
    assert first.etag and is_utc(first.created) and first.updated == first.created

    async with store.begin() as uow:
        assert await kind.repo(uow).get(*key_args) == first

    async with store.begin() as uow:
        repo = kind.repo(uow)
        with pytest.raises(PreconditionFailed):
            await repo.put(record, if_match="stale")
        second = await repo.put(record, if_match=first.etag)
        assert second.etag != first.etag and second.created == first.created
        assert is_utc(second.updated) and second.updated >= first.updated
        with pytest.raises(PreconditionFailed):
            await repo.put(record, if_match=first.etag)
        third = await repo.put(record, if_match="*")
        assert third.etag not in (first.etag, second.etag) and third.created == first.created
        fourth = await repo.put(record)  # no precondition: replace
        assert fourth.created == first.created

    async with store.begin() as uow:
        repo = kind.repo(uow)
        assert await repo.get(*key_args) == fourth
        with pytest.raises(PreconditionFailed):
            await repo.delete(*key_args, if_match=third.etag)
        await repo.delete(*key_args, if_match=fourth.etag)
        assert await repo.get(*key_args) is None
        with pytest.raises(NotFound):
            await repo.delete(*key_args)
        with pytest.raises(PreconditionFailed):
            await repo.put(record, if_match="*")
        with pytest.raises(PreconditionFailed):
            await repo.put(record, if_match=fourth.etag)

    async with store.begin() as uow:
        assert await kind.repo(uow).get(*key_args) is None
        await kind.repo(uow).put(record)
        await kind.repo(uow).delete(*key_args, if_match="*")
        assert await kind.repo(uow).get(*key_args) is None


async def test_hubs_and_settings(store: Store) -> None:
    async with store.begin() as uow:
        assert await uow.settings.get() is None
        assert await uow.hubs.list() == []
        await uow.settings.put(ServiceSettings("0ne00000001"))
        await uow.hubs.put(LinkedHub("b.example", allocation_weight=3, location="westeurope"))
        await uow.hubs.put(LinkedHub("a.example", apply_allocation_policy=False))
    async with store.begin() as uow:
        assert await uow.settings.get() == ServiceSettings("0ne00000001")
        stored = await uow.settings.put(ServiceSettings("0ne00000002", "geoLatency"))
        assert stored == ServiceSettings("0ne00000002", "geoLatency")
        assert [h.host_name for h in await uow.hubs.list()] == ["a.example", "b.example"]
        assert await uow.hubs.get("b.example") == LinkedHub("b.example", 3, True, "westeurope")
        await uow.hubs.put(LinkedHub("b.example", allocation_weight=7))
        await uow.hubs.delete("a.example")
        with pytest.raises(NotFound):
            await uow.hubs.delete("a.example")
    async with store.begin() as uow:
        assert await uow.settings.get() == ServiceSettings("0ne00000002", "geoLatency")
        assert await uow.hubs.list() == [LinkedHub("b.example", allocation_weight=7)]


async def test_record_fields_round_trip(store: Store) -> None:
    enrollment = replace(
        sym_enrollment("full-1"),
        device_id="device-full-1",
        optional_device_information={"a": [1, 2]},
        settings=EnrollmentSettings(
            provisioning_status="disabled",
            allocation_policy="custom",
            iot_hubs=("h1.example", "h2.example"),
            reprovision_policy=ReprovisionPolicy(False, False),
            initial_twin=InitialTwin({"t": 1}, {"d": {"x": True}}),
            iot_edge=True,
            custom_allocation_definition=CustomAllocationDefinition("https://hook.example/x", "2021-10-01"),
        ),
    )
    async with store.begin() as uow:
        put = await uow.enrollments.put(enrollment)
        reg = await uow.registrations.put(replace(registration("full-1"), error_code=400209, error_message="no"))
        dev = await uow.devices.put(device("h1.example", "full-1"))
    async with store.begin() as uow:
        got = await uow.enrollments.get("full-1")
        assert got == put
        assert got is not None and replace(got, etag=None, created=None, updated=None) == enrollment
        got_reg = await uow.registrations.get("full-1")
        assert got_reg == reg and got_reg is not None
        assert got_reg.payload == {"nested": {"n": 1, "list": [1, "two", None]}}
        got_dev = await uow.devices.get("h1.example", "full-1")
        assert got_dev == dev and got_dev is not None
        assert replace(got_dev, etag=None, created=None, updated=None) == device("h1.example", "full-1")


async def test_value_that_is_not_json_is_invalid_input(store: Store) -> None:
    async with store.begin() as uow:
        with pytest.raises(InvalidInput):
            await uow.registrations.put(replace(registration("j-1"), payload={"when": datetime.now(UTC)}))
        assert await uow.registrations.get("j-1") is None


# --------------------------------------------------------------------------- paging


async def collect(fetch: Callable[[str | None], Awaitable[Page[Any]]]) -> tuple[list[Any], int]:
    items: list[Any] = []
    token: str | None = None
    pages = 0
    while True:
        page = await fetch(token)
        pages += 1
        items.extend(page.items)
        token = page.continuation
        if token is None:
            return items, pages
        assert pages < 100


# Mixed case and punctuation: every backend must order keys by code point.
PAGE_IDS = [f"{p}{i:02d}" for p in ("A-", "a.", "B_", "z:", "0") for i in range(5)] + ["Zz", "_x1", "-1"]


async def test_paging_enrollments_groups_registrations(store: Store) -> None:
    async with store.begin() as uow:
        for rid in PAGE_IDS:
            await uow.enrollments.put(sym_enrollment(rid))
            await uow.groups.put(sym_group(rid))
            await uow.registrations.put(registration(rid, group="g-even" if PAGE_IDS.index(rid) % 2 == 0 else None))
    # Registration ids are case-insensitive keys: they list in the order of their lower case.
    expected = sorted(PAGE_IDS, key=str.lower)
    async with store.begin() as uow:
        enrollments, pages = await collect(lambda tok: uow.enrollments.list(page_size=5, continuation=tok))
        assert [e.registration_id for e in enrollments] == expected and pages == 6
        groups, pages = await collect(lambda tok: uow.groups.list(page_size=7, continuation=tok))
        assert [g.enrollment_group_id for g in groups] == sorted(PAGE_IDS) and pages == 4
        regs, _ = await collect(lambda tok: uow.registrations.list(page_size=4, continuation=tok))
        assert [r.registration_id for r in regs] == expected
        even, _ = await collect(
            lambda tok: uow.registrations.list(page_size=3, continuation=tok, enrollment_group_id="g-even")
        )
        assert [r.registration_id for r in even] == sorted(PAGE_IDS[::2], key=str.lower)
        # An exact multiple of the page size ends without an empty page.
        whole = await uow.enrollments.list(page_size=len(PAGE_IDS))
        assert len(whole.items) == len(PAGE_IDS) and whole.continuation is None
        first = await uow.enrollments.list(page_size=2)
        assert first.continuation is not None
        assert await uow.registrations.list(enrollment_group_id="nobody") == Page([], None)


async def test_registration_ids_are_case_insensitive_keys(store: Store) -> None:
    """DPS registration ids are case-insensitive: GDEV-1 and gdev-1 are one enrollment and one
    registration record, found and replaced whatever the case; a record keeps the spelling it
    was last written with."""
    async with store.begin() as uow:
        first = await uow.enrollments.put(sym_enrollment("GDEV-1"))
        await uow.registrations.put(registration("GDEV-1"))
    async with store.begin() as uow:
        found = await uow.enrollments.get("gdev-1")
        assert found is not None and found.registration_id == "GDEV-1" and found.etag == first.etag
        record = await uow.registrations.get("gDev-1", for_update=True)
        assert record is not None and record.registration_id == "GDEV-1"
        with pytest.raises(PreconditionFailed):
            await uow.enrollments.put(sym_enrollment("gdev-1"), if_match="not-the-etag")
    async with store.begin() as uow:
        again = await uow.enrollments.put(sym_enrollment("gdev-1"), if_match=first.etag)
        assert again.created == first.created and again.registration_id == "gdev-1"
        await uow.registrations.put(replace(registration("gdev-1"), operation_id="op-2"))
    async with store.begin() as uow:
        assert [e.registration_id for e in (await uow.enrollments.list()).items] == ["gdev-1"]
        regs = (await uow.registrations.list()).items
        assert [(r.registration_id, r.operation_id) for r in regs] == [("gdev-1", "op-2")]
        assert [e.registration_id for e in await uow.enrollments.list_x509()] == []
        await uow.enrollments.delete("GDEV-1")
        await uow.registrations.delete("Gdev-1", if_match=regs[0].etag)
    async with store.begin() as uow:
        assert await uow.enrollments.get("gdev-1") is None
        assert await uow.registrations.get("GDEV-1") is None
        with pytest.raises(NotFound):
            await uow.enrollments.delete("gdev-1")
        # Group ids stay as they are: the group API compares them exactly.
        await uow.groups.put(sym_group("Fleet"))
        assert await uow.groups.get("fleet") is None


async def test_paging_is_stable_under_inserts_and_rejects_bad_tokens(store: Store) -> None:
    async with store.begin() as uow:
        for i in range(6):
            await uow.devices.put(device("hub1.example", f"d{i}"))
            await uow.devices.put(device("hub2.example", f"d{i}x"))
    async with store.begin() as uow:
        first = await uow.devices.list("hub1.example", page_size=3)
        assert [d.device_id for d in first.items] == ["d0", "d1", "d2"]
    async with store.begin() as uow:
        await uow.devices.put(device("hub1.example", "d00"))  # sorts before the token: not seen
        rest, _ = await collect(
            lambda tok: uow.devices.list("hub1.example", page_size=2, continuation=tok or first.continuation)
        )
        assert [d.device_id for d in rest] == ["d3", "d4", "d5"]
        other, _ = await collect(lambda tok: uow.devices.list("hub2.example", page_size=4, continuation=tok))
        assert [d.device_id for d in other] == [f"d{i}x" for i in range(6)]
        for bad in ("not a token", "eyJ4IjoxfQ", "%%%"):
            with pytest.raises(InvalidInput):
                await uow.enrollments.list(continuation=bad)


# --------------------------------------------------------------------------- lookups


async def test_group_lookups_follow_puts_and_deletes(store: Store) -> None:
    async with store.begin() as uow:
        await uow.groups.put(signing_group("g-root", "root-ca", "int-ca"))
        await uow.groups.put(signing_group("g-int", "int-ca"))
        await uow.groups.put(ca_ref_group("g-ref", "uploaded-root", "uploaded-2"))
        await uow.groups.put(ca_ref_group("g-ref2", "uploaded-2"))
        await uow.groups.put(sym_group("g-sym"))
        await uow.groups.put(sym_group("g-sym-off").with_status("disabled"))
    async with store.begin() as uow:
        found = await uow.groups.find_by_signing_thumbprint(thumb("int-ca"))
        assert [g.enrollment_group_id for g in found] == ["g-int", "g-root"]
        lower = await uow.groups.find_by_signing_thumbprint(thumb("root-ca").lower())
        assert [g.enrollment_group_id for g in lower] == ["g-root"]
        assert await uow.groups.find_by_signing_thumbprint(thumb("nope")) == []
        refs = await uow.groups.find_by_ca_reference("uploaded-2")
        assert [g.enrollment_group_id for g in refs] == ["g-ref", "g-ref2"]
        sym = await uow.groups.list_symmetric_key()
        assert [(g.enrollment_group_id, g.enabled) for g in sym] == [("g-sym", True), ("g-sym-off", False)]
        # Re-pointing a group rewrites its index entries.
        await uow.groups.put(signing_group("g-root", "root-ca-2"))
        await uow.groups.delete("g-ref2")
    async with store.begin() as uow:
        assert [g.enrollment_group_id for g in await uow.groups.find_by_signing_thumbprint(thumb("int-ca"))] == [
            "g-int"
        ]
        assert await uow.groups.find_by_signing_thumbprint(thumb("root-ca")) == []
        assert [g.enrollment_group_id for g in await uow.groups.find_by_signing_thumbprint(thumb("root-ca-2"))] == [
            "g-root"
        ]
        assert [g.enrollment_group_id for g in await uow.groups.find_by_ca_reference("uploaded-2")] == ["g-ref"]
        await uow.groups.delete("g-int")
        assert await uow.groups.find_by_signing_thumbprint(thumb("int-ca")) == []


async def test_list_x509_enrollments_and_ca_lookups(store: Store) -> None:
    async with store.begin() as uow:
        for rid in ("x-2", "s-1", "x-1", "s-2"):
            await uow.enrollments.put(x509_enrollment(rid) if rid.startswith("x") else sym_enrollment(rid))
        await uow.cas.put(ca("root-b"))
        await uow.cas.put(ca("root-a"))
    async with store.begin() as uow:
        assert [e.registration_id for e in await uow.enrollments.list_x509()] == ["x-1", "x-2"]
        assert [c.name for c in await uow.cas.list()] == ["root-a", "root-b"]
        by_thumb = await uow.cas.get_by_thumbprint(thumb("root-b").lower())
        assert by_thumb is not None and by_thumb.name == "root-b"
        assert await uow.cas.get_by_thumbprint(thumb("other")) is None
        # One certificate cannot be uploaded under two names.
        with pytest.raises(AlreadyExists):
            await uow.cas.put(replace(ca("root-a"), name="root-c"))
        verified = await uow.cas.put(replace(ca("root-a"), is_verified=True))
        assert verified.is_verified
    async with store.begin() as uow:
        got = await uow.cas.get("root-a")
        assert got is not None and got.is_verified and got.info["subjectName"] == "CN=root-a"
        assert await uow.cas.get("root-c") is None


# --------------------------------------------------------------------------- concurrency


async def test_for_update_serialises_registrations_of_one_id(store: Store) -> None:
    seen: list[str] = []
    written: list[RegistrationRecord] = []

    async def register(name: str) -> None:
        async with store.begin() as uow:
            current = await uow.registrations.get("race-1", for_update=True)
            seen.append("new" if current is None else "existing")
            await asyncio.sleep(0.05)  # the other task runs meanwhile and must wait for us
            substatus = "initialAssignment" if current is None else "reprovisionedToInitialAssignment"
            record = replace(registration("race-1"), operation_id=name, substatus=substatus)
            written.append(await uow.registrations.put(record, if_match=current.etag if current else None))

    await asyncio.wait_for(asyncio.gather(register("a"), register("b")), timeout=10)
    assert sorted(seen) == ["existing", "new"]
    async with store.begin() as uow:
        final = await uow.registrations.get("race-1")
    assert final == written[1]
    assert final is not None and final.created == written[0].created
    assert final.substatus == "reprovisionedToInitialAssignment"


async def test_concurrent_first_puts_of_one_id_leave_one_record(store: Store) -> None:
    results: dict[str, RegistrationRecord] = {}

    async def put(name: str, delay_before: float, delay_after: float) -> None:
        await asyncio.sleep(delay_before)
        async with store.begin() as uow:
            results[name] = await uow.registrations.put(replace(registration("dup-1"), operation_id=name))
            await asyncio.sleep(delay_after)

    await asyncio.wait_for(asyncio.gather(put("a", 0, 0.1), put("b", 0.02, 0)), timeout=10)
    async with store.begin() as uow:
        final = await uow.registrations.get("dup-1")
        listed = await uow.registrations.list()
    assert final is not None and len(listed.items) == 1
    assert final == results["b"] and final.operation_id == "b"
    assert results["a"].created == results["b"].created == final.created


# --------------------------------------------------------------------------- transactions


async def test_rollback_on_exception_writes_nothing(store: Store) -> None:
    async with store.begin() as uow:
        kept = await uow.enrollments.put(sym_enrollment("kept-1"))

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with store.begin() as uow:
            await uow.registrations.put(registration("rb-1"))
            await uow.devices.put(device("hub1.example", "rb-1"))
            await uow.enrollments.put(sym_enrollment("kept-1"))  # an update, rolled back too
            await uow.enrollments.delete("kept-1")
            await uow.groups.put(signing_group("rb-g", "rb-ca"))
            await uow.cas.put(ca("rb-ca"))
            await uow.hubs.put(LinkedHub("rb.example"))
            await uow.settings.put(ServiceSettings("0ne0000rb"))
            await uow.refusals.add(Refusal("rb-1", "r", "m", None, datetime.now(UTC)))
            assert await uow.registrations.get("rb-1") is not None  # visible inside
            raise Boom
    # An error from the store itself (412) inside a block also rolls the block back.
    with pytest.raises(PreconditionFailed):
        async with store.begin() as uow:
            await uow.devices.put(device("hub1.example", "rb-2"))
            await uow.enrollments.put(sym_enrollment("kept-1"), if_match="stale")

    async with store.begin() as uow:
        assert await uow.registrations.get("rb-1") is None
        assert await uow.devices.get("hub1.example", "rb-1") is None
        assert await uow.devices.get("hub1.example", "rb-2") is None
        assert await uow.enrollments.get("kept-1") == kept
        assert await uow.groups.get("rb-g") is None
        assert await uow.groups.find_by_signing_thumbprint(thumb("rb-ca")) == []
        assert await uow.cas.get("rb-ca") is None
        assert await uow.hubs.list() == []
        assert await uow.settings.get() is None
        assert await uow.refusals.list() == []


async def test_unit_of_work_is_dead_after_its_block(store: Store) -> None:
    async with store.begin() as uow:
        pass
    with pytest.raises(StoreError):
        await uow.enrollments.get("x")


# --------------------------------------------------------------------------- refusals


def refusal(rid: str, n: int, *, reason: str = "NO_ENROLLMENT", peer: str | None = "10.0.0.9") -> Refusal:
    at = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    return Refusal(rid, reason, f"attempt {n}", "x509", at, None, peer)


async def add_refusals(store: Store, *refusals: Refusal) -> None:
    for one in refusals:
        async with store.begin() as uow:
            await uow.refusals.add(one)


async def test_refusals_count_repeated_attempts_in_one_entry(store: Store) -> None:
    # Three attempts of one device from one address with one reason: one entry.
    await add_refusals(store, *(refusal("dev-a", n) for n in (1, 2)))
    async with store.begin() as uow:  # two in one transaction count the same way
        await uow.refusals.add(refusal("dev-a", 3))
        assert [(r.count, r.message) for r in await uow.refusals.list("dev-a")] == [(3, "attempt 3")]
        await uow.refusals.add(replace(refusal("dev-a", 4), enrollment="g-1", attestation_type="sas"))
    # Another address, another reason: entries of their own.
    await add_refusals(store, refusal("dev-a", 5, peer="10.0.0.10"), refusal("dev-a", 6, reason="CHAIN_INVALID"))
    async with store.begin() as uow:
        found = await uow.refusals.list("dev-a")
    assert [(r.reason, r.peer, r.count) for r in found] == [
        ("CHAIN_INVALID", "10.0.0.9", 1),
        ("NO_ENROLLMENT", "10.0.0.10", 1),
        ("NO_ENROLLMENT", "10.0.0.9", 4),
    ]
    counted = found[2]
    # First and latest time; the latest attempt's words, attestation and enrollment.
    assert counted.first_at == refusal("dev-a", 1).at and counted.at == refusal("dev-a", 4).at
    assert (counted.message, counted.attestation_type, counted.enrollment) == ("attempt 4", "sas", "g-1")
    assert is_utc(counted.at) and is_utc(counted.first_at)
    assert found[0].first_seen == found[0].at
    # A peer-less attempt (no network edge) is an entry with peer None.
    await add_refusals(store, refusal("dev-b", 7, peer=None))
    async with store.begin() as uow:
        (peerless,) = await uow.refusals.list("dev-b")
    assert peerless.peer is None and peerless.count == 1


async def test_refusal_history_is_bounded_and_a_flood_evicts_only_its_own(store: Store) -> None:
    """REFUSAL_LIMIT = 5. A forged certificate from one address, then a flood of distinct
    registration ids from another (an IPv6 /64, changing its address each time) and from the
    forger's own address with another reason: the flood keeps only its newest entries."""
    forged = refusal("victim-1", 0, reason="CHAIN_INVALID", peer="10.0.0.1")
    await add_refusals(store, forged)
    flood = [refusal(f"junk-{n}", n, peer=f"2001:db8:0:1::{n:x}") for n in range(1, 30)]
    flood += [refusal(f"junk-b-{n}", 100 + n, peer="10.0.0.1") for n in range(1, 10)]
    await add_refusals(store, *flood[:20])
    async with store.begin() as uow:  # and several in one transaction
        for one in flood[20:]:
            await uow.refusals.add(one)
    async with store.begin() as uow:
        kept = await uow.refusals.list()
        assert [r.registration_id for r in await uow.refusals.list("victim-1")] == ["victim-1"]
        assert [r.registration_id for r in await uow.refusals.list(limit=2)] == ["junk-b-9", "junk-b-8"]
        assert await uow.refusals.list("nobody") == []
    # Each (source, reason) pair's newest first, then the second-newest, latest attempt first.
    assert [r.registration_id for r in kept] == ["junk-b-9", "junk-b-8", "junk-29", "junk-28", "victim-1"]
    assert kept[-1] == replace(forged, first_at=forged.at)


async def test_refused_registration_ids_are_kept_cut_to_size(store: Store) -> None:
    long_id = "x" * 300  # what a device sent, not a valid registration id
    await add_refusals(store, refusal(long_id, 1), refusal(long_id, 2))
    async with store.begin() as uow:
        (entry,) = await uow.refusals.list()
    assert entry.registration_id == long_id[:128] and entry.count == 2


async def test_statistics_count_records_and_bucket_activity_by_minute(store: Store) -> None:
    now = datetime.now(UTC)
    async with store.begin() as uow:
        for rid in ("s-1", "s-2"):
            await uow.enrollments.put(sym_enrollment(rid))
        await uow.groups.put(sym_group("s-g"))
        await uow.registrations.put(registration("s-1"))
        await uow.registrations.put(registration("s-2", "s-g"))
        await uow.registrations.put(registration("s-3", status="failed"))
        await uow.devices.put(device("hub1.example", "s-1"))
        await uow.devices.put(replace(device("hub1.example", "s-2"), status="disabled"))
        await uow.devices.put(device("hub2.example", "s-3"))
        await uow.refusals.add(Refusal("s-x", "enrollment_not_found", "one", "x509", now))
        await uow.refusals.add(Refusal("s-y", "enrollment_not_found", "old", "x509", now - timedelta(hours=2)))
    async with store.read() as uow:
        counts = await uow.stats.counts()
        assigned, refused = await uow.stats.per_minute(now - timedelta(hours=1))
        later = await uow.stats.per_minute(now + timedelta(minutes=5))
        assert (await uow.stats.devices("hub1.example")).total == 2
        assert (await uow.stats.devices("hub1.example")).enabled == 1
        assert (await uow.stats.devices("hub2.example")).total == 1
        assert (await uow.stats.devices("nowhere")).total == 0
    assert (counts.enrollments, counts.groups) == (2, 1)
    assert dict(counts.registrations) == {"assigned": 2, "failed": 1}
    # Both assignments were written a moment ago: in this minute (or the next, at a boundary).
    assert sum(assigned.values()) == 2 and sum(refused.values()) == 1
    for minute in (*assigned, *refused):
        assert is_utc(minute) and minute.second == 0 and minute.microsecond == 0
        assert abs(minute - now.replace(second=0, microsecond=0)) <= timedelta(minutes=1)
    assert later == ({}, {})


# --------------------------------------------------------------------------- secrets


async def test_keys_round_trip_and_never_show_in_repr(store: Store) -> None:
    async with store.begin() as uow:
        await uow.enrollments.put(sym_enrollment("k-1"))
        await uow.groups.put(sym_group("k-g"))
        await uow.devices.put(device("hub1.example", "k-1"))
        stored_ca = await uow.cas.put(ca("k-ca", code="0123456789ABCDEF"))
    async with store.begin() as uow:
        enrollment = await uow.enrollments.get("k-1")
        group = await uow.groups.get("k-g")
        dev = await uow.devices.get("hub1.example", "k-1")
        got_ca = await uow.cas.get("k-ca")
    assert enrollment is not None and group is not None and dev is not None and got_ca is not None
    assert enrollment.attestation.symmetric_key is not None and group.attestation.symmetric_key is not None
    assert enrollment.attestation.symmetric_key.keys() == (key("k-1/1"), key("k-1/2"))
    assert group.attestation.symmetric_key.keys() == (key("k-g/1"), key("k-g/2"))
    assert dev.auth.primary_key is not None and dev.auth.primary_key.reveal() == key("k-1/p")
    for record, secrets_ in (
        (enrollment, ("k-1/1", "k-1/2")),
        (group, ("k-g/1", "k-g/2")),
        (dev, ("k-1/p", "k-1/s")),
    ):
        text = repr(record) + str(record)
        for seed in secrets_:
            assert key(seed) not in text
    # The verification code is kept only as a hash, and still checks.
    assert got_ca == stored_ca and got_ca.verification_code is not None
    assert "0123456789ABCDEF" not in got_ca.verification_code.reveal()
    assert code_matches(got_ca.verification_code, "0123456789ABCDEF")
    assert not code_matches(got_ca.verification_code, "0123456789ABCDEE")


# --------------------------------------------------------------------------- failures


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_postgres_is_a_store_error_without_the_password() -> None:
    dsn = f"postgresql+asyncpg://iot:Sup3rS3cretPw@127.0.0.1:{closed_port()}/test"
    with pytest.raises(StoreError) as caught:
        await asyncio.wait_for(open_store(dsn), timeout=20)
    assert "Sup3rS3cretPw" not in str(caught.value) and "Sup3rS3cretPw" not in repr(caught.value)
    assert "127.0.0.1" in caught.value.message


async def test_unopenable_sqlite_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


async def test_bad_dsn_is_invalid_input_without_echo() -> None:
    for dsn in ("mysql://u:pw1234@h/db", "postgresql+psycopg2://u:pw1234@h/db", "not a url pw1234"):
        with pytest.raises(InvalidInput) as caught:
            await open_store(dsn)
        assert "pw1234" not in str(caught.value)


async def test_closed_store_refuses_transactions(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    opened = await open_backend(backend, request, tmp_path)
    await opened.close()
    with pytest.raises(StoreError):
        async with opened.begin():
            pass


# --------------------------------------------------------------------------- read-only units


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_read_only_unit_reads_and_refuses_writes(store: Store, kind: Kind) -> None:
    first = kind.make("ro-1")
    async with store.begin() as uow:
        await kind.repo(uow).put(first)
    async with store.read() as uow:
        assert await kind.repo(uow).get(*kind.key(first)) is not None
    with pytest.raises(StoreError, match="read-only"):
        async with store.read() as uow:
            await kind.repo(uow).put(kind.make("ro-2"))
    with pytest.raises(StoreError, match="read-only"):
        async with store.read() as uow:
            await uow.refusals.add(Refusal("ro-3", "NO_ENROLLMENT", "no", None, datetime.now(UTC), None))
    async with store.begin() as uow:  # nothing of either attempt was kept
        assert await kind.repo(uow).get(*kind.key(kind.make("ro-2"))) is None
        assert await uow.refusals.list("ro-3") == []


async def test_a_cas_crl_round_trips_and_survives_other_changes(store: Store) -> None:
    """The CRL a CA holds (provisioning.ca_admin.upload_crl) is a field of its document."""
    info = {"number": 7, "thisUpdate": "2026-03-01T12:00:00Z", "nextUpdate": "2026-03-08T12:00:00Z", "revokedCount": 2}
    async with store.begin() as uow:
        await uow.cas.put(
            replace(ca("crl-ca"), crl="-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----\n", crl_info=info)
        )
        await uow.cas.put(ca("no-crl"))
    async with store.begin() as uow:
        got = await uow.cas.get("crl-ca")
        none = await uow.cas.get("no-crl")
        assert got is not None and got.crl is not None and got.crl.startswith("-----BEGIN X509 CRL")
        assert got.crl_info == info and got.to_json()["properties"]["crl"] == info
        assert none is not None and none.crl is None and none.crl_info is None
        await uow.cas.put(replace(got, is_verified=True))
    async with store.begin() as uow:
        listed = {c.name: c for c in await uow.cas.list()}
    assert listed["crl-ca"].is_verified and listed["crl-ca"].crl_info == info
