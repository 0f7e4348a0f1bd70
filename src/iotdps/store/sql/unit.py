"""The SQL unit of work: one repository per aggregate over one transaction handle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iotdps.store._unit import Repositories, UnitRepositories
from iotdps.store.sql.audit import AuditTrail
from iotdps.store.sql.configuration import Cas, Hubs, Settings
from iotdps.store.sql.enrollments import Enrollments, Groups
from iotdps.store.sql.hub import C2D, Devices, HubSessions, Telemetry
from iotdps.store.sql.issuance import IssuedCertificates, IssuingCas, TrustBundles
from iotdps.store.sql.refusals import Refusals
from iotdps.store.sql.registrations import Registrations
from iotdps.store.sql.statistics import Stats
from iotdps.store.sql.tx import SqlTx

__all__ = ["SqlUnitOfWork"]

_T = TypeVar("_T")


_REPOSITORIES: Repositories[SqlTx] = Repositories(
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


class SqlUnitOfWork(UnitRepositories):
    def __init__(self, tx: SqlTx) -> None:
        super().__init__(tx, _REPOSITORIES)
        self._tx = tx

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        # Kept in the read cache, which every write of its tables drops (cache.py).
        return await self._tx.cached(("derived", *key), compute)
