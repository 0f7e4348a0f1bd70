"""The unit of work both stores hand out: one repository per aggregate, each built over the
store's own transaction. Only the repository classes differ between the stores; the list of
aggregates, and how a unit is put together, is this one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from iotdps.ports import (
    AuditLog,
    C2DRepo,
    CaRepo,
    DeviceRepo,
    EnrollmentRepo,
    GroupRepo,
    HubSessionRepo,
    IssuedCertificateRepo,
    IssuingCaRepo,
    LinkedHubRepo,
    RefusalLog,
    RegistrationRepo,
    SettingsRepo,
    StatisticsRepo,
    TelemetryRepo,
    TrustBundleRepo,
)

__all__ = ["Repositories", "UnitRepositories"]

_Tx = TypeVar("_Tx")


@dataclass(frozen=True, slots=True)
class Repositories(Generic[_Tx]):
    """One store's repository classes (each takes that store's transaction)."""

    enrollments: Callable[[_Tx], EnrollmentRepo]
    groups: Callable[[_Tx], GroupRepo]
    cas: Callable[[_Tx], CaRepo]
    hubs: Callable[[_Tx], LinkedHubRepo]
    settings: Callable[[_Tx], SettingsRepo]
    registrations: Callable[[_Tx], RegistrationRepo]
    devices: Callable[[_Tx], DeviceRepo]
    refusals: Callable[[_Tx], RefusalLog]
    stats: Callable[[_Tx], StatisticsRepo]
    telemetry: Callable[[_Tx], TelemetryRepo]
    c2d: Callable[[_Tx], C2DRepo]
    hub_sessions: Callable[[_Tx], HubSessionRepo]
    issuing_cas: Callable[[_Tx], IssuingCaRepo]
    trust_bundles: Callable[[_Tx], TrustBundleRepo]
    issued_certificates: Callable[[_Tx], IssuedCertificateRepo]
    audit: Callable[[_Tx], AuditLog]


class UnitRepositories:
    """The repositories of one unit of work; a store's unit adds `cached_config_answer`."""

    def __init__(self, tx: _Tx, repositories: Repositories[_Tx]) -> None:
        # Annotated with the port types: the UnitOfWork protocol's attributes are invariant.
        self.enrollments: EnrollmentRepo = repositories.enrollments(tx)
        self.groups: GroupRepo = repositories.groups(tx)
        self.cas: CaRepo = repositories.cas(tx)
        self.hubs: LinkedHubRepo = repositories.hubs(tx)
        self.settings: SettingsRepo = repositories.settings(tx)
        self.registrations: RegistrationRepo = repositories.registrations(tx)
        self.devices: DeviceRepo = repositories.devices(tx)
        self.refusals: RefusalLog = repositories.refusals(tx)
        self.stats: StatisticsRepo = repositories.stats(tx)
        self.telemetry: TelemetryRepo = repositories.telemetry(tx)
        self.c2d: C2DRepo = repositories.c2d(tx)
        self.hub_sessions: HubSessionRepo = repositories.hub_sessions(tx)
        self.issuing_cas: IssuingCaRepo = repositories.issuing_cas(tx)
        self.trust_bundles: TrustBundleRepo = repositories.trust_bundles(tx)
        self.issued_certificates: IssuedCertificateRepo = repositories.issued_certificates(tx)
        self.audit: AuditLog = repositories.audit(tx)
