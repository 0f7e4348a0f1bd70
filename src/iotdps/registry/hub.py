"""Hub records beyond the device identity: telemetry, cloud-to-device messages, MQTT sessions.

These live in the core (next to `DeviceIdentity`) because two adapters share them: the store
persists them and the hub runtime reads and writes them. The repositories are Protocols; the
store package implements them for the MemoryStore and the SqlStore, and the contract suite in
tests/contract holds both to one behaviour.

Rules every implementation keeps:
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

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from iotdps.provisioning.ports import DeviceRepo

__all__ = [
    "C2DRepo",
    "CloudMessage",
    "HubSession",
    "HubSessionRepo",
    "HubStore",
    "HubUnitOfWork",
    "TelemetryMessage",
    "TelemetryRepo",
]

Properties = Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """One device-to-cloud message as the hub stored it.

    `system_properties` use our names (`message_id`, `content_type`, ...; see
    `iotdps.protocols.mqtt.hub.SYSTEM_PROPERTY_KEYS`), `application_properties` the device's
    keys, both percent-decoded. `seq` is assigned by the store.
    """

    hub: str
    device_id: str
    body: bytes = field(repr=False)
    enqueued: datetime
    system_properties: Properties = field(default_factory=dict)
    application_properties: Properties = field(default_factory=dict)
    module_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class CloudMessage:
    """One cloud-to-device message, queued for a device until it PUBACKs or the message expires.

    `message_id` is unique (the hub generates one when the sender gave none); `seq` orders the
    queue and is assigned by the store.
    """

    hub: str
    device_id: str
    message_id: str
    body: bytes = field(repr=False)
    enqueued: datetime
    expires: datetime | None = None
    system_properties: Properties = field(default_factory=dict)
    application_properties: Properties = field(default_factory=dict)
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class HubSession:
    """What a clean-session-0 device keeps across connections and restarts.

    `subscriptions`: (filter, granted QoS), in the order first subscribed. The Azure SDK never
    re-subscribes after a reconnect (azure-wire-protocol.md 8.1), so without these C2D, methods
    and desired patches would stop after the first SAS renewal.
    `desired_version_sent`: the newest desired-properties version pushed to the device, so a
    patch made while it was offline is delivered when it comes back.
    """

    hub: str
    device_id: str
    subscriptions: tuple[tuple[str, int], ...] = ()
    desired_version_sent: int = 0


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


class HubStore(Protocol):
    def begin(self) -> AbstractAsyncContextManager[HubUnitOfWork]: ...
    async def close(self) -> None: ...
