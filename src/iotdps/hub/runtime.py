"""The hubs of one `iotdps up` process: CONNECT routing, live devices, cloud-side operations.

`HubRuntime` serves every hub host name given to it (several hubs in one process, so
allocation across hubs is real). The server's router calls `route` for each CONNECT whose
username has the hub shape; it authenticates the device (auth.py), enforces one connection per
device (a new CONNECT closes the old connection, as IoT Hub does with error 400027), restores
the device's persistent session and returns the endpoint that serves it (endpoint.py).

Cloud-side operations (`invoke_method`, `send_c2d`, `update_desired`) act on the store and on
the live connection if there is one. They are reachable from other processes (the CLI) through
`control_app()`, plain HTTP JSON the server mounts on a unix socket (control.py).

Background tasks: the telemetry group-commit writer (telemetry.py) and the C2D expiry sweep.
Transactions are never held while a socket is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from aiohttp import web

from iotdps.errors import InvalidInput, IotdpsError, NotFound, PreconditionFailed, Throttled
from iotdps.hub.auth import check_device
from iotdps.hub.devices import DeviceIdentity, Twin
from iotdps.hub.endpoint import DeviceEndpoint, identity_properties
from iotdps.hub.errors import DeviceNotConnected, MethodTimeout
from iotdps.hub.records import CloudMessage, HubSession
from iotdps.hub.telemetry import TelemetryWriter
from iotdps.hub.twin import apply_desired_patch, apply_reported_patch, merge_patch
from iotdps.jsonload import InvalidJson, load_json
from iotdps.ports import Clock, HubStore, Store, SystemClock
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest
from iotdps.protocols.mqtt.hub import (
    METHODS_FILTER,
    SYSTEM_PROPERTY_KEYS,
    format_method_request_topic,
    parse_hub_username,
)
from iotdps.protocols.mqtt.packets import Connect
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME
from iotdps.server.logthrottle import WindowedLog
from iotdps.server.mqtt_conn import CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE, MqttConnection, MqttEndpoint
from iotdps.server.peers import peer_text

__all__ = ["DEFAULT_C2D_TTL", "MAX_C2D_QUEUE", "HubRuntime"]

log = logging.getLogger(__name__)

CONNACK_IDENTIFIER_REJECTED = 2
MAX_C2D_QUEUE = 50  # IoT Hub's per-device queue depth
DEFAULT_C2D_TTL = 3600.0  # IoT Hub's default message time to live
MAX_METHOD_TIMEOUT = 300.0


class HubRuntime:
    def __init__(
        self,
        store: Store,
        hub_host_names: Sequence[str],
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        clock: Clock | None = None,
        c2d_expiry_interval: float = 30.0,
        telemetry_batch: int = 2000,
        token_max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME,
    ) -> None:
        if not hub_host_names:
            raise InvalidInput("at least one hub host name is needed")
        # Every store of ours implements the hub repositories too (iotdps.ports).
        self._store = cast(HubStore, store)
        self._hosts = {name.lower(): name for name in hub_host_names}
        self.max_packet_size = max_packet_size
        self.token_max_lifetime = token_max_lifetime
        self._clock: Clock = clock or SystemClock()
        self._c2d_expiry_interval = c2d_expiry_interval
        self.writer = TelemetryWriter(self._store, max_batch=telemetry_batch)
        self._live: dict[tuple[str, str], DeviceEndpoint] = {}
        self._methods: dict[str, tuple[DeviceEndpoint, asyncio.Future[tuple[int, Any]]]] = {}
        self._rids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self._stop_event = asyncio.Event()
        self._stopping = False
        # A refused CONNECT is an outsider's doing: its log lines come at a bounded rate.
        self.refused_log = WindowedLog(log, time.monotonic, "hub CONNECT refusals")

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(self._hosts.values())

    def now(self) -> datetime:
        return self._clock.now()

    async def start(self) -> None:
        self._stopping = False
        self._stop_event.clear()
        self.writer.start()
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().create_task(self._expire_loop(), name="hub-c2d-expiry")

    async def stop(self) -> None:
        """Stop accepting devices, store all queued telemetry, then close every connection."""
        self._stopping = True
        # Background work is told to stop, never cancelled: a task cancelled inside a store
        # transaction would roll back work the caller believes is under way.
        self._stop_event.set()
        if self._expiry is not None:
            await self._expiry
            self._expiry = None
        await self.writer.stop()
        self.refused_log.flush()
        for endpoint in list(self._live.values()):
            endpoint.conn.close("hub shutting down")
        for _endpoint, future in self._methods.values():
            if not future.done():
                future.set_exception(DeviceNotConnected("the hub is shutting down"))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    async def _expire_loop(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), self._c2d_expiry_interval)
            if self._stop_event.is_set():
                return
            try:
                async with self._store.begin() as uow:
                    gone = await uow.c2d.expire(self.now())
                if gone:
                    log.info("expired %d cloud-to-device messages", gone)
            except IotdpsError as exc:
                log.warning("C2D expiry sweep failed: %s", exc.message)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        """Run `coro` in the background; `stop` waits for it (it is never cancelled)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- connections ----------------------------------------------------------------------------

    def is_connected(self, hub: str, device_id: str) -> bool:
        return (self._canonical(hub), device_id) in self._live

    @property
    def connection_count(self) -> int:
        return len(self._live)

    def connected_count(self, hub: str) -> int:
        """Devices of `hub` connected to this process now (0 for a hub not served here)."""
        name = self._hosts.get(hub.lower())
        return sum(1 for live_hub, _device in self._live if live_hub == name)

    def _canonical(self, hub: str) -> str:
        name = self._hosts.get(hub.lower())
        if name is None:
            raise NotFound(f"hub {hub} is not served here")
        return name

    async def route(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        """Authenticate a hub CONNECT: the device's endpoint, or a CONNACK refusal code."""
        if self._stopping:
            return CONNACK_SERVER_UNAVAILABLE
        refused = self.refused_log
        try:
            username = parse_hub_username(connect.username or "")
        except InvalidDeviceRequest as exc:
            refused("bad username", "hub CONNECT from %s refused: %s", peer_text(conn.peername), exc.message)
            return CONNACK_NOT_AUTHORIZED
        hub = self._hosts.get(username.hostname.lower())
        device_id = username.device_id
        if hub is None:
            refused("unknown hub", "hub CONNECT for unknown hub %r refused", username.hostname[:200])
            return CONNACK_NOT_AUTHORIZED
        if username.module_id is not None:
            refused(
                "module",
                "hub %s: module %s/%s refused: modules are not supported",
                hub,
                device_id[:200],
                username.module_id[:200],
            )
            return CONNACK_NOT_AUTHORIZED
        if connect.client_id != device_id:
            refused(
                "client id",
                "hub %s: client id %r is not the device id %r",
                hub,
                connect.client_id[:200],
                device_id[:200],
            )
            return CONNACK_IDENTIFIER_REJECTED
        persistent = not connect.clean_session
        try:
            async with self._store.begin() as uow:
                device = await uow.devices.get(hub, device_id)
                session = await uow.hub_sessions.get(hub, device_id)
                if session is not None and not persistent:
                    await uow.hub_sessions.delete(hub, device_id)  # clean session: forget it
                    session = None
        except IotdpsError as exc:
            log.warning("hub %s: CONNECT of %s failed on the store: %s", hub, device_id, exc.message)
            return CONNACK_SERVER_UNAVAILABLE
        reason = check_device(
            device, username.hostname, connect.password, conn.peer, self.now(), self.token_max_lifetime
        )
        if reason is not None or device is None or not conn.open:
            refused(
                "device",
                "hub %s: device %s from %s refused at CONNECT: %s",
                hub,
                device_id[:200],
                peer_text(conn.peername),
                reason,
            )
            return CONNACK_NOT_AUTHORIZED
        key = (hub, device_id)
        old = self._live.pop(key, None)
        if old is not None:
            old.conn.close("replaced by a new connection of the same device")
        endpoint = DeviceEndpoint(
            self,
            conn,
            hub,
            device_id,
            persistent=persistent,
            session=session,
            desired_version=device.twin.desired_version,
            identity=identity_properties(device, "sas" if connect.password else "x509"),
        )
        conn.identity = f"{hub}/{device_id}"
        self._live[key] = endpoint
        # Runs after the CONNACK (written as soon as this returns).
        self.spawn(endpoint.resume())
        return endpoint

    def detach(self, endpoint: DeviceEndpoint, reason: str) -> None:
        key = (endpoint.hub, endpoint.device_id)
        if self._live.get(key) is endpoint:
            del self._live[key]
        for rid, (owner, future) in list(self._methods.items()):
            if owner is endpoint and not future.done():
                future.set_exception(DeviceNotConnected(f"device {endpoint.device_id} disconnected"))
                del self._methods[rid]

    def disconnect(self, hub: str, device_id: str, reason: str = "closed by an operator") -> bool:
        endpoint = self._live.get((self._canonical(hub), device_id))
        if endpoint is None:
            return False
        endpoint.conn.close(reason)
        return True

    # -- store helpers used by endpoints --------------------------------------------------------

    async def get_device(self, hub: str, device_id: str) -> DeviceIdentity | None:
        async with self._store.begin() as uow:
            return await uow.devices.get(hub, device_id)

    async def save_session(self, session: HubSession) -> None:
        try:
            async with self._store.begin() as uow:
                await uow.hub_sessions.put(session)
        except IotdpsError as exc:
            log.warning("hub %s: session of %s not saved: %s", session.hub, session.device_id, exc.message)

    async def pending_c2d(self, hub: str, device_id: str, after: int | None, limit: int) -> Sequence[CloudMessage]:
        async with self._store.begin() as uow:
            return await uow.c2d.pending(hub, device_id, self.now(), after=after, limit=limit)

    async def complete_c2d(self, hub: str, device_id: str, seq: int) -> None:
        try:
            async with self._store.begin() as uow:
                await uow.c2d.complete(hub, device_id, seq)
        except IotdpsError as exc:
            log.warning("hub %s: C2D %d of %s not completed: %s", hub, seq, device_id, exc.message)

    async def _update_twin(
        self, hub: str, device_id: str, change: Callable[[Twin], Twin], if_match: str | None = None
    ) -> DeviceIdentity:
        """Read, change and write a twin; retried when a concurrent writer won the etag race."""
        for attempt in range(5):
            try:
                async with self._store.begin() as uow:
                    device = await uow.devices.get(hub, device_id)
                    if device is None:
                        raise NotFound(f"device {device_id} not found on {hub}")
                    if if_match not in (None, "*") and if_match != device.etag:
                        raise PreconditionFailed(f"device {device_id} has changed: etag does not match")
                    updated = replace(device, twin=change(device.twin))
                    return await uow.devices.put(updated, if_match=device.etag)
            except PreconditionFailed:
                if if_match not in (None, "*") or attempt == 4:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def patch_reported(self, hub: str, device_id: str, patch: Any) -> int:
        device = await self._update_twin(hub, device_id, lambda twin: apply_reported_patch(twin, patch))
        return device.twin.reported_version

    # -- cloud-side operations ------------------------------------------------------------------

    async def update_desired(
        self,
        hub: str,
        device_id: str,
        patch: Mapping[str, Any],
        if_match: str | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
    ) -> Twin:
        """Apply a desired-properties patch (and a tags patch, in the same write) and push the
        desired patch to the device if it is connected."""
        hub = self._canonical(hub)

        def change(twin: Twin) -> Twin:
            changed = apply_desired_patch(twin, patch)
            return replace(changed, tags=merge_patch(changed.tags, tags)) if tags else changed

        device = await self._update_twin(hub, device_id, change, if_match)
        endpoint = self._live.get((hub, device_id))
        if endpoint is not None:
            pushed = {k: v for k, v in patch.items() if k != "$version"}
            if endpoint.push_desired(pushed, device.twin.desired_version):
                await endpoint.saved_after_push()
        return device.twin

    async def invoke_method(self, hub: str, device_id: str, name: str, payload: Any, timeout: float) -> tuple[int, Any]:
        """Call a direct method; (status, payload) of the device's answer.

        Raises DeviceNotConnected when the device is offline or not subscribed to methods, and
        MethodTimeout when it does not answer within `timeout` seconds.
        """
        hub = self._canonical(hub)
        if not name or len(name) > 128:
            raise InvalidInput("a method name is 1..128 characters")
        if not 0 < timeout <= MAX_METHOD_TIMEOUT:
            raise InvalidInput(f"the method timeout must be in (0, {MAX_METHOD_TIMEOUT:.0f}] seconds")
        try:
            body = json.dumps(payload, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput("the method payload is not JSON") from exc
        endpoint = self._live.get((hub, device_id))
        if endpoint is None or endpoint.closed:
            raise DeviceNotConnected(f"device {device_id} is not connected to {hub}")
        if METHODS_FILTER not in endpoint.subscriptions:
            raise DeviceNotConnected(f"device {device_id} is not listening for direct methods")
        rid = format(next(self._rids), "x")
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._methods[rid] = (endpoint, future)
        try:
            endpoint.conn.publish(format_method_request_topic(name, rid), body, qos=0)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MethodTimeout(f"device {device_id} did not answer method {name!r} within {timeout:g} s") from None
        finally:
            self._methods.pop(rid, None)

    def method_answered(self, endpoint: DeviceEndpoint, rid: str, status: int, payload: bytes) -> None:
        waiting = self._methods.get(rid)
        if waiting is None or waiting[0] is not endpoint or waiting[1].done():
            log.info("hub %s: late or unknown method answer %r from %s", endpoint.hub, rid, endpoint.device_id)
            return
        try:
            value: Any = load_json(payload, what="the method response") if payload.strip() else None
        except InvalidJson:
            value = payload.decode("utf-8", "replace")
        waiting[1].set_result((status, value))

    async def send_c2d(
        self,
        hub: str,
        device_id: str,
        body: bytes,
        properties: Mapping[str, str],
        ttl: float | None,
    ) -> str:
        """Queue a cloud-to-device message; returns its message id.

        `properties`: application properties, except the wire keys of system properties
        (`$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.uid`, `iothub-ack`), which set those.
        `ttl`: seconds until it expires (default one hour, as IoT Hub).
        """
        hub = self._canonical(hub)
        if len(body) > 64 * 1024:
            raise InvalidInput("a cloud-to-device message body is at most 64 KiB")
        ttl = DEFAULT_C2D_TTL if ttl is None else ttl
        if not 0 < ttl <= 48 * 3600:
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
        now = self.now()
        expires = now + timedelta(seconds=ttl)
        system["message_id"] = message_id
        system["to"] = f"/devices/{device_id}/messages/deviceBound"
        system["expiry_time_utc"] = expires.isoformat().replace("+00:00", "Z")
        message = CloudMessage(hub, device_id, message_id, bytes(body), now, expires, system, application)
        async with self._store.begin() as uow:
            if await uow.devices.get(hub, device_id) is None:
                raise NotFound(f"device {device_id} not found on {hub}")
            if await uow.c2d.count(hub, device_id) >= MAX_C2D_QUEUE:
                raise Throttled(f"the queue of device {device_id} is full ({MAX_C2D_QUEUE} messages)", 60)
            await uow.c2d.add(message)
        endpoint = self._live.get((hub, device_id))
        if endpoint is not None:
            endpoint.kick_c2d()
        return message_id

    def control_app(self) -> web.Application:
        """The local control endpoint (HTTP JSON) for the CLI; see iotdps.hub.control."""
        from iotdps.hub.control import build_control_app

        return build_control_app(self)
