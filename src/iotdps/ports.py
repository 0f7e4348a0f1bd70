"""Ports: every repository and service Protocol the core needs from the outside.

The core never imports an adapter. The store (SQLite / PostgreSQL, and an in-memory fake that
the contract suite in tests/contract holds to the same behaviour), the clock, randomness and the
webhook transport are injected, and this module says what each must do.

This module sits on the floor, under the core: any core package may import it, and it imports
nothing of the core at run time. The records the repositories carry belong to their domains
(`enrollment`, `allocation.hubs`, `provisioning`, the hub's records); they are named here for the
type checker only (`TYPE_CHECKING`).

Store rules every implementation keeps:
- `Store.begin()` is one transaction: it commits when the block exits normally and rolls
  back on any exception, so a failure never leaves half of a registration written.
- `put` assigns a fresh etag and `updated` time, keeps `created` of an existing record, and
  raises PreconditionFailed when `if_match` is given and differs from the stored etag (or the
  record does not exist); `if_match="*"` matches any existing record.
- `delete` raises NotFound for a missing record and PreconditionFailed on an etag mismatch.
- Listing is paged by an opaque continuation token (None = first page / no more pages),
  ordered by the record's key.
- `RegistrationRepo.get(..., for_update=True)` locks the row until the transaction ends
  (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises writers), so two concurrent
  registrations of one id end in one consistent record.

The hub's repositories (every store of ours implements them too):
- Telemetry is append-only. `add_many` assigns increasing sequence numbers (`seq`) in the order
  given; `list` returns messages in ascending `seq`. It is written in batches by the hub's
  group-commit writer: one transaction per batch.
- A cloud-to-device message stays queued until `complete` (the device PUBACKed it) or until it
  expires (`expire` deletes every message whose `expires` is at or before `now`); `pending`
  never returns an expired message.
- A hub session (the subscriptions of a clean-session-0 device) is replaced whole by `put`;
  `delete` of a missing session is not an error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from iotdps.allocation.hubs import LinkedHub
    from iotdps.audit.chain import Actor, AuditDraft, AuditEntry, AuditQuery
    from iotdps.enrollment.cas import CaCertificate
    from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
    from iotdps.hub.devices import DeviceIdentity, Twin
    from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
    from iotdps.issuance.models import IssuedCertificate, IssuingCa
    from iotdps.pki.trust_bundle import TrustBundle
    from iotdps.provisioning.records import RegistrationRecord
    from iotdps.provisioning.settings import ServiceSettings

__all__ = [
    "AuditLog",
    "C2DRepo",
    "CaAdmin",
    "CaRepo",
    "Clock",
    "ClusterPresence",
    "DeviceCounts",
    "DeviceRepo",
    "EnrollmentRepo",
    "GroupRepo",
    "HubOperations",
    "HubSessionRepo",
    "HubStore",
    "HubUnitOfWork",
    "IssuedCertificateRepo",
    "IssuingCaRepo",
    "LinkedHubRepo",
    "LiveDevices",
    "Page",
    "Refusal",
    "RefusalLog",
    "RegistrationRepo",
    "ServiceCounts",
    "SettingsRepo",
    "StatisticsRepo",
    "Store",
    "SystemClock",
    "TelemetryRepo",
    "TrustBundleRepo",
    "UnitOfWork",
    "WebhookResponse",
    "WebhookTransport",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Refused registration attempts, kept for operators (the device only saw a status).

    `reason` is a stable machine code (see iotdps.refusals); `message` the words. `peer`
    is the device's IP address as the edge saw it (None when there was no network peer).
    Attempts with the same reason, registration id and peer are one entry: `count` of them,
    the first at `first_at`, the latest at `at` (with the latest message, attestation type and
    enrollment). What `add` takes is one attempt (count 1, `first_at` None).
    """

    registration_id: str
    reason: str
    message: str
    attestation_type: str | None
    at: datetime
    enrollment: str | None = None
    peer: str | None = None
    count: int = 1
    first_at: datetime | None = None

    @property
    def first_seen(self) -> datetime:
        return self.first_at or self.at


class EnrollmentRepo(Protocol):
    async def get(self, registration_id: str) -> IndividualEnrollment | None: ...
    async def put(self, enrollment: IndividualEnrollment, if_match: str | None = None) -> IndividualEnrollment: ...
    async def delete(self, registration_id: str, if_match: str | None = None) -> None: ...
    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[IndividualEnrollment]: ...
    async def list_x509(self) -> Sequence[IndividualEnrollment]:
        """Every individual enrollment with X.509 attestation (their certs are TLS anchors)."""
        ...


class GroupRepo(Protocol):
    async def get(self, group_id: str) -> EnrollmentGroup | None: ...
    async def put(self, group: EnrollmentGroup, if_match: str | None = None) -> EnrollmentGroup: ...
    async def delete(self, group_id: str, if_match: str | None = None) -> None: ...
    async def list(self, page_size: int = 100, continuation: str | None = None) -> Page[EnrollmentGroup]: ...
    async def find_by_signing_thumbprint(self, sha256_thumbprint: str) -> Sequence[EnrollmentGroup]:
        """X.509 groups whose primary or secondary signing certificate has this thumbprint."""
        ...

    async def find_by_ca_reference(self, ca_name: str) -> Sequence[EnrollmentGroup]:
        """X.509 groups whose primary or secondary caReference names this uploaded CA."""
        ...

    async def list_symmetric_key(self) -> Sequence[EnrollmentGroup]:
        """Every symmetric-key group, enabled or not (a disabled match must block)."""
        ...


class CaRepo(Protocol):
    async def get(self, name: str) -> CaCertificate | None: ...
    async def get_by_thumbprint(self, sha256_thumbprint: str) -> CaCertificate | None: ...
    async def put(self, ca: CaCertificate, if_match: str | None = None) -> CaCertificate: ...
    async def delete(self, name: str, if_match: str | None = None) -> None: ...
    async def list(self) -> Sequence[CaCertificate]: ...


class IssuingCaRepo(Protocol):
    """Issuing CA objects by name (issue 18); the secret inside is sealed, never plain."""

    async def get(self, name: str) -> IssuingCa | None: ...
    async def put(self, ca: IssuingCa, if_match: str | None = None) -> IssuingCa: ...
    async def delete(self, name: str, if_match: str | None = None) -> None: ...
    async def list(self) -> Sequence[IssuingCa]: ...


class TrustBundleRepo(Protocol):
    """Trust bundles by id, compared case-insensitively (Azure's rule). `put` stores the given
    version and gives it the store's etag and times (the bundle's own `etag`, `created` and
    `modified` are replaced), with the usual if_match rules."""

    async def get(self, bundle_id: str, *, for_update: bool = False) -> TrustBundle | None: ...
    async def put(self, bundle: TrustBundle, if_match: str | None = None) -> TrustBundle: ...
    async def delete(self, bundle_id: str, if_match: str | None = None) -> None: ...
    async def list(self) -> Sequence[TrustBundle]: ...


class IssuedCertificateRepo(Protocol):
    """Every certificate issued at registration; append-only, keyed by SHA-256 thumbprint."""

    async def add(self, cert: IssuedCertificate) -> None:
        """AlreadyExists when a certificate with this thumbprint is recorded."""
        ...

    async def get(self, sha256_thumbprint: str) -> IssuedCertificate | None: ...
    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[IssuedCertificate]:
        """Newest first; `registration_id` compares case-insensitively, as registrations do."""
        ...


class LinkedHubRepo(Protocol):
    async def get(self, host_name: str, *, for_update: bool = False) -> LinkedHub | None:
        """`for_update`: lock the row until the transaction ends (PostgreSQL), for a
        read-modify-write that must not lose another node's concurrent one (its leases)."""
        ...

    async def put(self, hub: LinkedHub) -> LinkedHub: ...
    async def delete(self, host_name: str) -> None: ...
    async def list(self) -> Sequence[LinkedHub]: ...


class SettingsRepo(Protocol):
    async def get(self) -> ServiceSettings | None: ...
    async def put(self, settings: ServiceSettings) -> ServiceSettings: ...


class RegistrationRepo(Protocol):
    async def get(self, registration_id: str, *, for_update: bool = False) -> RegistrationRecord | None: ...
    async def put(self, record: RegistrationRecord, if_match: str | None = None) -> RegistrationRecord: ...
    async def delete(self, registration_id: str, if_match: str | None = None) -> None: ...
    async def list(
        self, page_size: int = 100, continuation: str | None = None, *, enrollment_group_id: str | None = None
    ) -> Page[RegistrationRecord]: ...


class DeviceRepo(Protocol):
    """Device identities on the hubs (keyed by hub host name and device id)."""

    async def get(self, hub: str, device_id: str, *, for_update: bool = False) -> DeviceIdentity | None:
        """`for_update`: lock the row until the transaction ends (the SQL store on PostgreSQL),
        so that a write based on what was read cannot undo a concurrent one."""
        ...

    async def put(self, device: DeviceIdentity, if_match: str | None = None) -> DeviceIdentity: ...
    async def delete(self, hub: str, device_id: str, if_match: str | None = None) -> None: ...
    async def list(self, hub: str, page_size: int = 100, continuation: str | None = None) -> Page[DeviceIdentity]: ...


class RefusalLog(Protocol):
    """A bounded history that a flood cannot wipe (the rules: store._common, "Refusal retention").

    `add` counts an attempt into the entry of its (reason, registration id, peer), or starts
    one. Past the store's limit, entries are dropped fairly: the newest entries of every
    (source network, reason) pair are kept before the second-newest of any, and so on, so one
    noisy source (or one noisy reason) only ever pushes out its own older entries.
    """

    async def add(self, refusal: Refusal) -> None: ...

    async def list(self, registration_id: str | None = None, limit: int = 100) -> Sequence[Refusal]:
        """The retained entries, latest attempt first."""
        ...


class AuditLog(Protocol):
    """The audit trail (iotdps.audit): append-only and hash-chained, in the unit of work of the
    change it records, so that both commit or neither does.

    `append` numbers the entry one past the newest (seq), links it to the newest entry's hash
    and stamps it with the store's clock; two transactions appending at once never both link to
    the same entry (PostgreSQL: a transaction-scoped lock taken by `append`; SQLite: its one
    writer). Nothing is ever dropped except by `prune`, which removes entries older than a time
    (never the newest) and appends an `audit.pruned` entry naming the last one removed, so the
    chain stays verifiable from there. A store that keeps no log (the CLI's remote store, whose
    server logs the change itself) returns None from `append`.
    """

    async def append(self, draft: AuditDraft) -> AuditEntry | None: ...

    async def list(self, query: AuditQuery) -> Sequence[AuditEntry]:
        """Entries matching `query`, ascending seq, at most `query.limit`."""
        ...

    async def prune(self, before: datetime, draft: AuditDraft) -> AuditEntry | None:
        """Remove the entries older than `before` (never the newest) and append `draft` (an
        `audit.pruned` entry) with `throughSeq`/`throughHash`/`removed` added to its detail;
        None (and nothing appended) when nothing was old enough."""
        ...


@dataclass(frozen=True, slots=True)
class ServiceCounts:
    """How many records the provisioning service holds; `registrations` by status."""

    enrollments: int
    groups: int
    registrations: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class DeviceCounts:
    """Device identities of one hub."""

    total: int
    enabled: int


class StatisticsRepo(Protocol):
    """Counts for operators (the console's overview, the hub's statistics routes). Answers come
    from the database, so every node of a fleet shows the same numbers, and they survive a
    restart."""

    async def counts(self) -> ServiceCounts: ...

    async def per_minute(self, since: datetime) -> tuple[Mapping[datetime, int], Mapping[datetime, int]]:
        """(assignments, refusals) per minute from `since` on, keyed by the minute's start
        (UTC, seconds zero). An assigned registration counts in the minute of its latest
        assignment (a device assigned twice in the window counts once); refusals count as
        far back as the bounded refusal log reaches."""
        ...

    async def devices(self, hub: str) -> DeviceCounts: ...


class UnitOfWork(Protocol):
    enrollments: EnrollmentRepo
    groups: GroupRepo
    cas: CaRepo
    hubs: LinkedHubRepo
    settings: SettingsRepo
    registrations: RegistrationRepo
    devices: DeviceRepo
    refusals: RefusalLog
    stats: StatisticsRepo
    issuing_cas: IssuingCaRepo
    trust_bundles: TrustBundleRepo
    issued_certificates: IssuedCertificateRepo
    audit: AuditLog

    async def cached_config_answer(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[T]]) -> T:
        """`compute()`, or the answer it gave for the same key earlier, in this or an earlier
        transaction, as long as no enrollment group, CA, linked hub or setting has changed
        since (a store without a read cache just calls it). Only for answers derived from
        those tables: an X.509 chain's CA steps, say, which every device of a line repeats."""
        ...


class Store(Protocol):
    def begin(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """One transaction; commit on normal exit, roll back on exception."""
        ...

    def read(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work that only reads; a write in it raises StoreError. Cheaper than begin()
        where the database allows (no BEGIN/COMMIT round trips, no write lock); each read sees
        what was committed before it, as under READ COMMITTED."""
        ...

    async def close(self) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


class SystemClock:
    """The real clock (tests inject a fixed one)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class CaAdmin(Protocol):
    """CA proof of possession (provisioning.ca_admin locally; the CLI's client of a remote server
    speaks the same calls over the management API)."""

    async def upload_ca(
        self, name: str, pem: str, verified: bool = False, if_match: str | None = None
    ) -> CaCertificate: ...
    async def generate_verification_code(self, name: str, if_match: str | None = None) -> tuple[str, CaCertificate]: ...
    async def verify_ca(self, name: str, verification_cert_pem: str, if_match: str | None = None) -> CaCertificate: ...
    async def upload_crl(self, name: str, data: str, if_match: str | None = None) -> CaCertificate:
        """Hold `data` (PEM, or DER as base64 text) as CA `name`'s CRL (provisioning.ca_admin)."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    status: int
    body: Mapping[str, Any] | None


class WebhookTransport(Protocol):
    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> WebhookResponse:
        """POST `body` as JSON; raise TimeoutError or OSError on transport failure."""
        ...


# --------------------------------------------------------------------------- the hub's repositories


class TelemetryRepo(Protocol):
    async def add_many(self, messages: Sequence[TelemetryMessage]) -> None: ...

    async def list(
        self,
        hub: str,
        device_id: str | None = None,
        *,
        after: int | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> Sequence[TelemetryMessage]:
        """Ascending `seq`. `after`: only messages with a greater seq. `newest`: the last
        `limit` matching messages (still returned oldest first), else the first `limit`."""
        ...

    async def prune(self, hub: str, *, before: datetime | None, keep: int | None, limit: int) -> int:
        """Retention: delete up to `limit` of `hub`'s oldest messages enqueued before `before`
        or beyond its `keep` newest (None: that rule is off); the number deleted."""
        ...

    async def claim_pruning(self, hub: str) -> bool:
        """Retention across nodes: True when this unit of work may prune `hub` now, held until
        it ends; False while another node's unit prunes it (one pruner at a time)."""
        ...


class C2DRepo(Protocol):
    async def add(self, message: CloudMessage) -> CloudMessage: ...
    async def pending(
        self, hub: str, device_id: str, now: datetime, *, after: int | None = None, limit: int = 100
    ) -> Sequence[CloudMessage]: ...
    async def complete(self, hub: str, device_id: str, seq: int) -> bool:
        """Remove one delivered message; False when it was already gone."""
        ...

    async def count(self, hub: str, device_id: str) -> int: ...
    async def expire(self, now: datetime) -> int:
        """Delete every message that expired at or before `now`; the number deleted."""
        ...

    async def purge(self, hub: str, device_id: str) -> int:
        """Delete a device's whole queue (the device was deleted); the number deleted."""
        ...


class HubSessionRepo(Protocol):
    async def get(self, hub: str, device_id: str) -> HubSession | None: ...
    async def put(self, session: HubSession) -> None: ...
    async def delete(self, hub: str, device_id: str) -> None: ...


class HubUnitOfWork(Protocol):
    devices: DeviceRepo
    telemetry: TelemetryRepo
    c2d: C2DRepo
    hub_sessions: HubSessionRepo
    # An operator's identity and twin changes are logged in their own transaction (iotdps.hub.audit).
    audit: AuditLog


class HubStore(Protocol):
    def begin(self) -> AbstractAsyncContextManager[HubUnitOfWork]: ...
    async def close(self) -> None: ...


# --------------------------------------------------------------------------- the hub's live connections


class LiveDevices(Protocol):
    """The devices connected to this process's hubs, as the hub's domain reaches them.

    `iotdps.hub.cloud` acts on the store and then, through this, on the device's connection if
    there is one; `iotdps.server.hub_live` implements it over MQTT connections. Hub names are
    the canonical host names the hub serves. Nothing here waits for a socket write, and no
    method is called inside a store transaction.
    """

    def is_connected(self, hub: str, device_id: str) -> bool: ...

    def connected_count(self, hub: str) -> int:
        """Devices of `hub` connected to this process now."""
        ...

    def disconnect(self, hub: str, device_id: str, reason: str) -> bool:
        """Close the device's connection; False when it was not connected."""
        ...

    def recheck(self, hub: str, device_id: str) -> None:
        """The device's hub identity changed (committed): close its connection, if any, when
        the credential it authenticated with is no longer accepted (iotdps.hub.auth). Returns
        at once; the check reads the identity in the background."""
        ...

    async def push_desired(self, hub: str, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        """Send a desired-properties patch (now at `version`) if the device is connected and
        subscribed to desired patches; its session remembers the version it was sent."""
        ...

    def deliver_c2d(self, hub: str, device_id: str) -> None:
        """A cloud-to-device message was queued: start delivering if the device listens."""
        ...

    async def call_method(self, hub: str, device_id: str, name: str, payload: bytes, timeout: float) -> tuple[int, Any]:
        """Send a direct method request (`payload`: JSON) and wait for the device's answer:
        (status, payload). Raises iotdps.hub.errors.DeviceNotConnected when the device is not
        connected or not subscribed to methods, MethodTimeout after `timeout` seconds."""
        ...


class HubOperations(Protocol):
    """What the management API needs of the running hub (iotdps.hub.cloud.CloudOperations provides it):
    who is connected, and the cloud-side operations that reach a live device."""

    def is_connected(self, hub: str, device_id: str) -> bool: ...
    def connected_count(self, hub: str) -> int: ...
    def disconnect(self, hub: str, device_id: str, reason: str = ...) -> bool: ...
    async def update_desired(
        self,
        hub: str,
        device_id: str,
        patch: Mapping[str, Any],
        if_match: str | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> Twin: ...
    async def invoke_method(
        self, hub: str, device_id: str, name: str, payload: Any, timeout: float
    ) -> tuple[int, Any]: ...
    async def send_c2d(
        self, hub: str, device_id: str, body: bytes, properties: Mapping[str, str], ttl: float | None
    ) -> str: ...


class ClusterPresence(Protocol):
    """Where each device's connection is, across the nodes of one service, and each node's lease
    (iotdps.store.sql.cluster on PostgreSQL). A node renews its lease with `heartbeat`; a node
    whose lease is older than `lease` seconds is dead, and its devices are not connected."""

    async def heartbeat(self, node_id: str) -> None: ...
    async def leave(self, node_id: str) -> None: ...
    async def live_nodes(self, lease: float) -> list[str]: ...
    async def reap(self, lease: float) -> int: ...
    async def set_present(self, hub: str, device_id: str, node_id: str) -> None: ...
    async def set_absent(self, hub: str, device_id: str, node_id: str) -> None: ...
    async def presence(self, lease: float) -> Mapping[tuple[str, str], str]: ...
