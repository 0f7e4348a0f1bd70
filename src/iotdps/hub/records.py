"""Hub records beyond the device identity: telemetry, cloud-to-device messages, MQTT sessions.

These live in the hub's domain (next to `DeviceIdentity` in devices.py) because two adapters
share them: the store persists them and the hub's MQTT endpoint reads and writes them. Their
repositories are Protocols in `iotdps.ports` (with the rules every implementation keeps); the
store package implements them for the MemoryStore and the SqlStore, and the contract suite in
tests/contract holds both to one behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["CloudMessage", "HubSession", "TelemetryMessage"]

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
