"""What a connected device's requests do to the hub's records, from CONNECT on.

The server's MQTT endpoint (iotdps.server.hub_mqtt) parses packets and writes replies; this is
the hub's side of each request: admitting a CONNECT (auth.py's decision on the device record
and the TLS evidence, and the device's persistent session), twin reads and reported patches,
the session's subscriptions, the cloud-to-device queue, and telemetry, which goes to the
group-commit writer stamped with the connection's identity (stamps.py).

Store failures of a request surface as IotdpsError for the endpoint to answer; the session and
C2D bookkeeping the device never waits for only logs them. No transaction is held while a
socket is written: these return before the endpoint writes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps import metrics
from iotdps.errors import IotdpsError
from iotdps.evidence import PeerIdentity
from iotdps.hub.auth import check_device
from iotdps.hub.devices import DeviceIdentity
from iotdps.hub.records import CloudMessage, HubSession, TelemetryMessage
from iotdps.hub.stamps import identity_properties, without_hub_set
from iotdps.hub.telemetry import TelemetryWriter
from iotdps.hub.twin import apply_reported_patch, update_twin
from iotdps.ports import Clock, HubStore, SystemClock
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME

__all__ = ["Admitted", "DeviceRequests"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A device let in: its record, the session it resumes (None: a fresh one) and the
    properties the hub stamps on its messages."""

    device: DeviceIdentity
    session: HubSession | None
    identity: Mapping[str, str | None]


class DeviceRequests:
    def __init__(
        self,
        store: HubStore,
        writer: TelemetryWriter,
        *,
        clock: Clock | None = None,
        token_max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME,
    ) -> None:
        self._store = store
        self.writer = writer
        self._clock: Clock = clock or SystemClock()
        self.token_max_lifetime = token_max_lifetime

    def now(self) -> datetime:
        return self._clock.now()

    async def admit(
        self,
        hub: str,
        device_id: str,
        *,
        hostname: str,
        persistent: bool,
        password: bytes | None,
        peer: PeerIdentity | None,
    ) -> Admitted | str:
        """Admitted, or why the device may not connect (for operators: the device only sees
        CONNACK 5). A clean-session CONNECT forgets the device's saved session. Store failures
        raise IotdpsError."""
        async with self._store.begin() as uow:
            device = await uow.devices.get(hub, device_id)
            session = await uow.hub_sessions.get(hub, device_id)
            if session is not None and not persistent:
                await uow.hub_sessions.delete(hub, device_id)  # clean session: forget it
                session = None
        reason = check_device(device, hostname, password, peer, self.now(), self.token_max_lifetime)
        if reason is not None or device is None:
            return reason or "no such device on this hub"
        return Admitted(device, session, identity_properties(device, "sas" if password else "x509"))

    # -- twin -----------------------------------------------------------------------------------

    async def get_device(self, hub: str, device_id: str) -> DeviceIdentity | None:
        async with self._store.begin() as uow:
            return await uow.devices.get(hub, device_id)

    async def patch_reported(self, hub: str, device_id: str, patch: Any) -> int:
        """Apply a reported-properties patch; the new reported version."""
        device = await update_twin(self._store, hub, device_id, lambda twin: apply_reported_patch(twin, patch))
        return device.twin.reported_version

    # -- session --------------------------------------------------------------------------------

    async def save_session(self, session: HubSession) -> None:
        try:
            async with self._store.begin() as uow:
                await uow.hub_sessions.put(session)
        except IotdpsError as exc:
            log.warning("hub %s: session of %s not saved: %s", session.hub, session.device_id, exc.message)

    # -- cloud-to-device ------------------------------------------------------------------------

    async def pending_c2d(self, hub: str, device_id: str, after: int | None, limit: int) -> Sequence[CloudMessage]:
        async with self._store.begin() as uow:
            return await uow.c2d.pending(hub, device_id, self.now(), after=after, limit=limit)

    async def complete_c2d(self, hub: str, device_id: str, seq: int) -> None:
        try:
            async with self._store.begin() as uow:
                await uow.c2d.complete(hub, device_id, seq)
            metrics.hub_operation(hub, "c2d", "delivered")
        except IotdpsError as exc:
            log.warning("hub %s: C2D %d of %s not completed: %s", hub, seq, device_id, exc.message)

    # -- telemetry ------------------------------------------------------------------------------

    def telemetry_message(
        self,
        hub: str,
        device_id: str,
        body: bytes,
        system: Mapping[str, str | None],
        application: Mapping[str, str | None],
        identity: Mapping[str, str | None],
        *,
        retain: bool,
    ) -> TelemetryMessage:
        """One message for the group-commit writer (`self.writer`), stamped with the
        connection's `identity`. Synchronous, like the writer's `offer`: the telemetry path
        awaits nothing while the writer's queue has room."""
        bag = without_hub_set(application)
        if retain:
            bag["mqtt-retain"] = "true"  # what IoT Hub does with RETAIN
        return TelemetryMessage(hub, device_id, body, self.now(), {**without_hub_set(system), **identity}, bag)
