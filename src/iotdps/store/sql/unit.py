"""The SQL unit of work: one repository per aggregate over one transaction handle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iotdps.ports import (
    C2DRepo,
    CaRepo,
    DeviceRepo,
    EnrollmentRepo,
    GroupRepo,
    HubSessionRepo,
    LinkedHubRepo,
    RefusalLog,
    RegistrationRepo,
    SettingsRepo,
    StatisticsRepo,
    TelemetryRepo,
)
from iotdps.store.sql.configuration import Cas, Hubs, Settings
from iotdps.store.sql.enrollments import Enrollments, Groups
from iotdps.store.sql.hub import C2D, Devices, HubSessions, Telemetry
from iotdps.store.sql.refusals import Refusals
from iotdps.store.sql.registrations import Registrations
from iotdps.store.sql.statistics import Stats
from iotdps.store.sql.tx import SqlTx

__all__ = ["SqlUnitOfWork"]

_T = TypeVar("_T")


class SqlUnitOfWork:
    def __init__(self, tx: SqlTx) -> None:
        # Annotated with the port types: the UnitOfWork protocol's attributes are invariant.
        self.enrollments: EnrollmentRepo = Enrollments(tx)
        self.groups: GroupRepo = Groups(tx)
        self.cas: CaRepo = Cas(tx)
        self.hubs: LinkedHubRepo = Hubs(tx)
        self.settings: SettingsRepo = Settings(tx)
        self.registrations: RegistrationRepo = Registrations(tx)
        self.devices: DeviceRepo = Devices(tx)
        self.refusals: RefusalLog = Refusals(tx)
        self.stats: StatisticsRepo = Stats(tx)
        self.telemetry: TelemetryRepo = Telemetry(tx)
        self.c2d: C2DRepo = C2D(tx)
        self.hub_sessions: HubSessionRepo = HubSessions(tx)
        self._tx = tx

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        # Kept in the read cache, which every write of its tables drops (cache.py).
        return await self._tx.cached(("derived", *key), compute)
