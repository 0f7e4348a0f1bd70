"""The cloud-to-device queue's rules: what a message may carry, how deep a device's queue
may grow, when messages expire, and the sweep that deletes the expired ones.

A message stays queued until the device PUBACKs it (the MQTT endpoint then completes it) or it
expires, so a message in flight when a connection drops is delivered again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from iotdps import metrics
from iotdps.errors import InvalidInput, IotdpsError, NotFound, Throttled
from iotdps.hub.records import CloudMessage
from iotdps.ports import Clock, HubStore
from iotdps.protocols.mqtt.hub import SYSTEM_PROPERTY_KEYS

__all__ = ["DEFAULT_C2D_TTL", "MAX_C2D_BODY", "MAX_C2D_QUEUE", "C2DExpiry", "enqueue", "new_cloud_message"]

log = logging.getLogger(__name__)

MAX_C2D_QUEUE = 50  # IoT Hub's per-device queue depth
DEFAULT_C2D_TTL = 3600.0  # IoT Hub's default message time to live
MAX_C2D_TTL = 48 * 3600.0
MAX_C2D_BODY = 64 * 1024


def new_cloud_message(
    hub: str, device_id: str, body: bytes, properties: Mapping[str, str], ttl: float | None, now: datetime
) -> CloudMessage:
    """A message for the queue, or InvalidInput.

    `properties`: application properties, except the wire keys of system properties
    (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.uid`, `iothub-ack`), which set those.
    `ttl`: seconds until it expires (default one hour, as IoT Hub).
    """
    if len(body) > MAX_C2D_BODY:
        raise InvalidInput("a cloud-to-device message body is at most 64 KiB")
    ttl = DEFAULT_C2D_TTL if ttl is None else ttl
    if not 0 < ttl <= MAX_C2D_TTL:
        raise InvalidInput("the time to live must be in (0, 48 h]")
    system: dict[str, str | None] = {}
    application: dict[str, str | None] = {}
    for key, value in properties.items():
        if key in SYSTEM_PROPERTY_KEYS and key not in ("$.to", "$.exp", "$.on", "$.ifid"):
            system[SYSTEM_PROPERTY_KEYS[key]] = value
        elif key.startswith("$.") or key in ("$.to", "$.exp"):
            raise InvalidInput(f"system property {key!r} cannot be set")
        else:
            application[key] = value
    message_id = system.get("message_id") or str(uuid.uuid4())
    expires = now + timedelta(seconds=ttl)
    system["message_id"] = message_id
    system["to"] = f"/devices/{device_id}/messages/deviceBound"
    system["expiry_time_utc"] = expires.isoformat().replace("+00:00", "Z")
    return CloudMessage(hub, device_id, message_id, bytes(body), now, expires, system, application)


async def enqueue(store: HubStore, message: CloudMessage) -> None:
    """Queue `message` for its device: NotFound for an unknown device, Throttled when its queue
    is full."""
    hub, device_id = message.hub, message.device_id
    async with store.begin() as uow:
        if await uow.devices.get(hub, device_id) is None:
            raise NotFound(f"device {device_id} not found on {hub}")
        if await uow.c2d.count(hub, device_id) >= MAX_C2D_QUEUE:
            raise Throttled(f"the queue of device {device_id} is full ({MAX_C2D_QUEUE} messages)", 60)
        await uow.c2d.add(message)
    metrics.hub_operation(hub, "c2d", "queued")


class C2DExpiry:
    """The background sweep that deletes expired messages every `interval` seconds."""

    def __init__(self, store: HubStore, clock: Clock, interval: float = 30.0) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop_event.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-c2d-expiry")

    async def stop(self) -> None:
        # Told to stop, never cancelled: a task cancelled inside a store transaction would roll
        # back work the caller believes is under way.
        self._stop_event.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), self._interval)
            if self._stop_event.is_set():
                return
            try:
                async with self._store.begin() as uow:
                    gone = await uow.c2d.expire(self._clock.now())
                if gone:
                    log.info("expired %d cloud-to-device messages", gone)
            except IotdpsError as exc:
                log.warning("C2D expiry sweep failed: %s", exc.message)
