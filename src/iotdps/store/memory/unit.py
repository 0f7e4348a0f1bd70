"""The in-memory unit of work: one repository per aggregate over one transaction."""

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
from iotdps.store.memory.configuration import Cas, Hubs, Settings
from iotdps.store.memory.enrollments import Enrollments, Groups
from iotdps.store.memory.hub import C2D, Devices, HubSessions, Telemetry
from iotdps.store.memory.refusals import Refusals
from iotdps.store.memory.registrations import Registrations
from iotdps.store.memory.statistics import Stats
from iotdps.store.memory.tx import MemoryTx

__all__ = ["MemoryUnitOfWork"]

_T = TypeVar("_T")


class MemoryUnitOfWork:
    def __init__(self, tx: MemoryTx) -> None:
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

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[_T]]) -> _T:
        return await compute()  # no read cache to keep it in
