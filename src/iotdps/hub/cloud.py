"""Cloud-side operations on a hub's devices: desired-twin patches, direct methods,
cloud-to-device messages and disconnects, as the management API, the control socket and the
CLI ask for them.

Each acts on the store first and then, through `iotdps.ports.LiveDevices`, on the device's
live connection if there is one (the server's MQTT endpoint implements it). Without live
devices (`offline_operations`, the CLI on a data dir with no server running) what needs a
connection answers DeviceNotConnected and the rest still changes the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from iotdps.audit import Actor
from iotdps.errors import InvalidInput
from iotdps.hub.audit import record_twin
from iotdps.hub.c2d import enqueue, new_cloud_message
from iotdps.hub.devices import DeviceIdentity, Twin
from iotdps.hub.errors import DeviceNotConnected
from iotdps.hub.names import HubNames
from iotdps.hub.twin import Written, apply_desired_patch, merge_patch, update_twin
from iotdps.ports import Clock, HubStore, HubUnitOfWork, LiveDevices, Store, SystemClock

__all__ = ["MAX_METHOD_TIMEOUT", "CloudOperations", "offline_operations"]

MAX_METHOD_TIMEOUT = 300.0


class CloudOperations:
    def __init__(
        self, store: HubStore, names: HubNames, live: LiveDevices | None = None, clock: Clock | None = None
    ) -> None:
        self._store = store
        self._names = names
        self._live = live
        self._clock: Clock = clock or SystemClock()

    @property
    def host_names(self) -> tuple[str, ...]:
        return self._names.all

    # -- connections ----------------------------------------------------------------------------

    def is_connected(self, hub: str, device_id: str) -> bool:
        hub = self._names.canonical(hub)
        return self._live is not None and self._live.is_connected(hub, device_id)

    def connected_count(self, hub: str) -> int:
        """Devices of `hub` connected to this process now (0 for a hub not served here)."""
        name = self._names.find(hub)
        return 0 if name is None or self._live is None else self._live.connected_count(name)

    @property
    def connection_count(self) -> int:
        return sum(self.connected_count(name) for name in self._names.all)

    def disconnect(self, hub: str, device_id: str, reason: str = "closed by an operator") -> bool:
        hub = self._names.canonical(hub)
        return self._live is not None and self._live.disconnect(hub, device_id, reason)

    def recheck(self, hub: str, device_id: str) -> None:
        """The device's identity changed (committed): its connection, wherever it is, is closed
        when the credential it authenticated with is no longer accepted. A hub not served
        here has no connection to re-check."""
        name = self._names.find(hub)
        if name is not None and self._live is not None:
            self._live.recheck(name, device_id)

    # -- operations -----------------------------------------------------------------------------

    async def update_desired(
        self,
        hub: str,
        device_id: str,
        patch: Mapping[str, Any],
        if_match: str | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        actor: Actor | None = None,
    ) -> Twin:
        """Apply a desired-properties patch (and a tags patch, in the same write) and push the
        desired patch to the device if it is connected. `actor`: the operator, whose change the
        audit trail logs in the same transaction (iotdps.hub.audit)."""
        hub = self._names.canonical(hub)

        def change(twin: Twin) -> Twin:
            changed = apply_desired_patch(twin, patch)
            return replace(changed, tags=merge_patch(changed.tags, tags)) if tags else changed

        written = None if actor is None else _logged_as(actor, ["tags", "desired"] if tags else ["desired"])
        device = await update_twin(self._store, hub, device_id, change, if_match, written=written)
        if self._live is not None:
            pushed = {k: v for k, v in patch.items() if k != "$version"}
            await self._live.push_desired(hub, device_id, pushed, device.twin.desired_version)
        return device.twin

    async def invoke_method(self, hub: str, device_id: str, name: str, payload: Any, timeout: float) -> tuple[int, Any]:
        """Call a direct method; (status, payload) of the device's answer.

        Raises DeviceNotConnected when the device is offline or not subscribed to methods, and
        MethodTimeout when it does not answer within `timeout` seconds.
        """
        hub = self._names.canonical(hub)
        if not name or len(name) > 128:
            raise InvalidInput("a method name is 1..128 characters")
        if not 0 < timeout <= MAX_METHOD_TIMEOUT:
            raise InvalidInput(f"the method timeout must be in (0, {MAX_METHOD_TIMEOUT:.0f}] seconds")
        try:
            body = json.dumps(payload, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput("the method payload is not JSON") from exc
        if self._live is None:
            raise DeviceNotConnected(f"device {device_id} is not connected to {hub}")
        return await self._live.call_method(hub, device_id, name, body, timeout)

    async def send_c2d(
        self,
        hub: str,
        device_id: str,
        body: bytes,
        properties: Mapping[str, str],
        ttl: float | None,
    ) -> str:
        """Queue a cloud-to-device message (see iotdps.hub.c2d); returns its message id. Not
        audited, as telemetry is not: the data plane (iotdps.hub.audit)."""
        hub = self._names.canonical(hub)
        message = new_cloud_message(hub, device_id, body, properties, ttl, self._clock.now())
        await enqueue(self._store, message)
        if self._live is not None:
            self._live.deliver_c2d(hub, device_id)
        return message.message_id


def _logged_as(actor: Actor, sections: list[str]) -> Written:
    """A twin write's last step: the operator's audit entry, in the write's transaction."""

    async def written(uow: HubUnitOfWork, before: DeviceIdentity, saved: DeviceIdentity) -> None:
        await record_twin(uow, actor, before, saved, sections)

    return written


def offline_operations(store: Store, hub: str) -> CloudOperations:
    """Cloud operations on one hub's records with no live connections (the CLI when no server
    runs on the data dir)."""
    # Every store of ours implements the hub repositories too (iotdps.ports).
    return CloudOperations(cast(HubStore, store), HubNames([hub]))
