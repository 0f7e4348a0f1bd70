"""The SQL store's read cache never hides another node's (or process's) committed change.

Two store objects on one database stand in for two nodes (PostgreSQL) or for `iotdps up` and a
local admin command (SQLite): whatever one commits, the other's next transaction reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iotdps.allocation.hubs import LinkedHub
from iotdps.enrollment.models import EnrollmentGroup
from iotdps.ports import Store, UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import open_store

from .conftest import PG_DSN, open_backend

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


async def _second(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if backend == "sqlite":
        return await open_store(f"sqlite:///{tmp_path / 'contract.db'}")
    return await open_store(PG_DSN, schema=request.getfixturevalue("pg_schema"))


@pytest.fixture
async def nodes(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two store objects on one database: two nodes, or `iotdps up` and an admin command."""
    node_a = await open_backend(backend, request, tmp_path)
    node_b = await _second(backend, request, tmp_path)
    try:
        yield node_a, node_b
    finally:
        await node_a.close()
        await node_b.close()


async def test_another_nodes_writes_are_read_at_once(nodes: tuple[Store, Store]) -> None:
    node_a, node_b = nodes
    for _ in range(2):  # the second round is answered from node A's cache
        async with node_a.begin() as uow:
            assert await uow.settings.get() is None
            assert await uow.hubs.list() == []
            assert await uow.groups.list_symmetric_key() == []
    async with node_b.begin() as uow:
        await uow.settings.put(ServiceSettings("0ne00000078"))
        await uow.hubs.put(LinkedHub("hub-a.example", 1, True))
        await uow.groups.put(
            EnrollmentGroup.from_json({"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey"}})
        )
    async with node_a.begin() as uow:
        assert await uow.settings.get() == ServiceSettings("0ne00000078")
        assert [hub.host_name for hub in await uow.hubs.list()] == ["hub-a.example"]
        assert [g.enrollment_group_id for g in await uow.groups.list_symmetric_key()] == ["g1"]
    async with node_b.begin() as uow:  # a delete is seen too
        await uow.groups.delete("g1")
    async with node_a.begin() as uow:
        assert await uow.groups.list_symmetric_key() == []
        assert await uow.cas.list() == []


async def test_a_rolled_back_write_never_reaches_the_cache(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = await open_backend(backend, request, tmp_path)
    try:
        async with store.begin() as uow:
            await uow.settings.put(ServiceSettings("0ne00000079"))
        with pytest.raises(RuntimeError):
            async with store.begin() as uow:
                await uow.settings.put(ServiceSettings("0ne000000FF"))
                assert await uow.settings.get() == ServiceSettings("0ne000000FF")  # read inside the transaction
                raise RuntimeError("abandon the transaction")
        async with store.begin() as uow:
            assert await uow.settings.get() == ServiceSettings("0ne00000079")
    finally:
        await store.close()


async def test_own_writes_are_read_back(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = await open_backend(backend, request, tmp_path)
    try:
        async with store.begin() as uow:
            assert await uow.cas.list() == []
        async with store.begin() as uow:
            await uow.hubs.put(LinkedHub("hub-b.example", 2, True))
        async with store.begin() as uow:
            assert [(h.host_name, h.allocation_weight) for h in await uow.hubs.list()] == [("hub-b.example", 2)]
    finally:
        await store.close()


async def test_derived_answers_last_until_a_cached_table_changes(nodes: tuple[Store, Store]) -> None:
    node_a, node_b = nodes
    computed: list[int] = []

    async def groups_now(uow: UnitOfWork) -> int:
        async def count() -> int:
            computed.append(1)
            return len(await uow.groups.list_symmetric_key())

        return await uow.cached_config_answer(("symmetric-key groups",), count)

    group = EnrollmentGroup.from_json({"enrollmentGroupId": "g1", "attestation": {"type": "symmetricKey"}})
    for _ in range(3):
        async with node_a.begin() as uow:
            assert await groups_now(uow) == 0
    assert len(computed) == 1  # later transactions were answered from the cache
    async with node_a.begin() as uow:  # our own write: not cached while the write is pending
        await uow.groups.put(group)
        assert await groups_now(uow) == 1
    async with node_a.begin() as uow:
        assert await groups_now(uow) == 1
    async with node_b.begin() as uow:  # another node's (or process's) write
        await uow.groups.delete("g1")
    async with node_a.begin() as uow:
        assert await groups_now(uow) == 0
    # A registration (devices and registration records only) keeps the derived answer.
    before = len(computed)
    async with node_a.begin() as uow:
        await uow.registrations.put(RegistrationRecord("dev-1", "assigning", "op-1"))
    async with node_a.begin() as uow:
        assert await groups_now(uow) == 0
    assert len(computed) == before


async def test_a_unit_that_reads_a_key_first_still_sees_another_nodes_writes(nodes: tuple[Store, Store]) -> None:
    # On PostgreSQL the configuration version comes with a unit's first keyed read (one
    # statement for both) rather than on its own: it must still cover the cached reads after.
    node_a, node_b = nodes
    for _ in range(2):  # fill node A's cache, then answer from it
        async with node_a.read() as uow:
            assert await uow.enrollments.get("dev-1") is None
            assert await uow.hubs.list() == []
        async with node_a.begin() as uow:
            assert await uow.registrations.get("dev-1", for_update=True) is None
            assert await uow.hubs.list() == []
    async with node_b.begin() as uow:
        await uow.hubs.put(LinkedHub("hub-c.example", 1, True))
    async with node_a.read() as uow:
        assert await uow.enrollments.get("dev-1") is None
        assert [hub.host_name for hub in await uow.hubs.list()] == ["hub-c.example"]
    async with node_b.begin() as uow:
        await uow.hubs.put(LinkedHub("hub-d.example", 1, True))
    async with node_a.begin() as uow:
        assert await uow.registrations.get("dev-1", for_update=True) is None
        assert sorted(hub.host_name for hub in await uow.hubs.list()) == ["hub-c.example", "hub-d.example"]


async def test_a_read_only_unit_keeps_one_view_of_a_key(nodes: tuple[Store, Store]) -> None:
    node_a, node_b = nodes
    async with node_a.read() as uow:
        assert await uow.registrations.get("dev-2") is None
        async with node_b.begin() as other:  # commits while node A's unit is open
            await other.registrations.put(RegistrationRecord("dev-2", "assigning", "op-2"))
        assert await uow.registrations.get("dev-2") is None  # the unit's own view
    async with node_a.read() as uow:
        found = await uow.registrations.get("dev-2")
        assert found is not None and found.operation_id == "op-2"
