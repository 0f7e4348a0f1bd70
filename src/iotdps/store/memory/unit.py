"""The in-memory unit of work: one repository per aggregate over one transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iotdps.store._unit import Repositories, UnitRepositories
from iotdps.store.memory.audit import AuditTrail
from iotdps.store.memory.configuration import Cas, Hubs, Settings
from iotdps.store.memory.enrollments import Enrollments, Groups
from iotdps.store.memory.hub import C2D, Devices, HubSessions, Telemetry
from iotdps.store.memory.issuance import IssuedCertificates, IssuingCas, TrustBundles
from iotdps.store.memory.refusals import Refusals
from iotdps.store.memory.registrations import Registrations
from iotdps.store.memory.statistics import Stats
from iotdps.store.memory.tx import MemoryTx

__all__ = ["MemoryUnitOfWork"]

_T = TypeVar("_T")


_REPOSITORIES: Repositories[MemoryTx] = Repositories(
    enrollments=Enrollments,
    groups=Groups,
    cas=Cas,
    hubs=Hubs,
    settings=Settings,
    registrations=Registrations,
    devices=Devices,
    refusals=Refusals,
    stats=Stats,
    telemetry=Telemetry,
    c2d=C2D,
    hub_sessions=HubSessions,
    issuing_cas=IssuingCas,
    trust_bundles=TrustBundles,
    issued_certificates=IssuedCertificates,
    audit=AuditTrail,
)


class MemoryUnitOfWork(UnitRepositories):
    def __init__(self, tx: MemoryTx) -> None:
        super().__init__(tx, _REPOSITORIES)

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        return await compute()  # no read cache to keep it in
