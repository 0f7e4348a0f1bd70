"""The hub's live connections in one process: CONNECT routing, one connection per device, and
`iotdps.ports.LiveDevices` for the hub's cloud-side operations.

The shared MQTT listener hands every CONNECT whose username has the hub shape to `route`. It
checks the CONNECT's shape (username, module, client id), has the hub's domain admit the device
(`DeviceRequests.admit`: auth on the device record and the TLS evidence, the persistent session),
enforces one connection per device (a new CONNECT closes the old connection, as IoT Hub does
with error 400027) and returns the endpoint that serves it (hub_mqtt.py). A refused CONNECT is
an outsider's doing: its log lines come at a bounded rate.

A device whose identity changes while it is connected (`recheck`: a registration that issued a
certificate and kept no old credential, a renewal, new keys) has its connection re-checked
against the new identity with the credential it authenticated with (`hub.auth.ConnectProof`)
and closed if that is no longer accepted: the old credential stops working at once, not at the
device's next CONNECT, while a connection made with a credential still accepted stays.

Method calls wait here for the device's answer, keyed by request id; a connection that closes
fails the calls waiting on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from iotdps import metrics
from iotdps.errors import IotdpsError
from iotdps.hub.auth import ConnectProof, recheck_device, revoked_chain
from iotdps.hub.device_requests import DeviceRequests
from iotdps.hub.errors import DeviceNotConnected, MethodTimeout
from iotdps.hub.names import HubNames
from iotdps.jsonload import InvalidJson, load_json
from iotdps.pki.revocation import NO_REVOCATIONS, Revocations
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest
from iotdps.protocols.mqtt.hub import METHODS_FILTER, format_method_request_topic, parse_hub_username
from iotdps.protocols.mqtt.packets import Connect
from iotdps.secret import Secret
from iotdps.server.hub_credentials import CredentialRequests
from iotdps.server.hub_mqtt import DeviceEndpoint
from iotdps.server.logthrottle import WindowedLog
from iotdps.server.mqtt_conn import CONNACK_NOT_AUTHORIZED, CONNACK_SERVER_UNAVAILABLE, MqttConnection, MqttEndpoint
from iotdps.server.peers import peer_text

__all__ = ["CONNACK_IDENTIFIER_REJECTED", "HubConnections"]

log = logging.getLogger(__name__)

CONNACK_IDENTIFIER_REJECTED = 2


class HubConnections:
    """Implements iotdps.ports.LiveDevices, and hub_mqtt.EndpointHost for its endpoints."""

    def __init__(self, names: HubNames, requests: DeviceRequests) -> None:
        self._names = names
        self._requests = requests
        # The credentials topic (certificate renewal); None until the node has issuers for it.
        self.credentials: CredentialRequests | None = None
        self._live: dict[tuple[str, str], DeviceEndpoint] = {}
        self._methods: dict[str, tuple[DeviceEndpoint, asyncio.Future[tuple[int, Any]]]] = {}
        self._rids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._revoked = NO_REVOCATIONS
        self.refused_log = WindowedLog(
            log, time.monotonic, "hub CONNECT refusals", count=metrics.refusal, event="hub_connect_refused"
        )
        metrics.track_hubs(self, HubConnections._connected_by_hub)
        # Told (hub, device id, connected) whenever a device's connection here starts or ends:
        # how the other nodes of a cluster learn where a device is (server/cluster_live.py).
        self.on_presence: Callable[[str, str, bool], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False

    def stop_accepting(self) -> None:
        """From now on every CONNECT is answered "server unavailable" (the SDKs retry)."""
        self._stopping = True

    async def close_all(self) -> None:
        """Close every connection, fail the method calls waiting, wait for background work."""
        self._stopping = True
        self.refused_log.flush()
        for endpoint in list(self._live.values()):
            endpoint.conn.close("hub shutting down")
        for _endpoint, future in self._methods.values():
            if not future.done():
                future.set_exception(DeviceNotConnected("the hub is shutting down"))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in the background; `close_all` waits for it (it is never cancelled)."""
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- CONNECT --------------------------------------------------------------------------------

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
        hub = self._names.find(username.hostname)
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
        # The revocations in force now, not at the handshake: a CRL that arrived in between
        # counts (the TLS layer's own check is in the device's verify errors, see hub.auth).
        revoked = revoked_chain(conn.peer, self._revoked)
        if revoked is not None:
            refused("revoked", "hub %s: device %s refused at CONNECT: %s", hub, device_id[:200], revoked)
            return CONNACK_NOT_AUTHORIZED
        persistent = not connect.clean_session
        try:
            admitted = await self._requests.admit(
                hub,
                device_id,
                hostname=username.hostname,
                persistent=persistent,
                password=connect.password,
                peer=conn.peer,
            )
        except IotdpsError as exc:
            log.warning("hub %s: CONNECT of %s failed on the store: %s", hub, device_id, exc.message)
            return CONNACK_SERVER_UNAVAILABLE
        if isinstance(admitted, str) or not conn.open:
            refused(
                "device",
                "hub %s: device %s from %s refused at CONNECT: %s",
                hub,
                device_id[:200],
                peer_text(conn.peername),
                admitted if isinstance(admitted, str) else None,
            )
            return CONNACK_NOT_AUTHORIZED
        key = (hub, device_id)
        old = self._live.pop(key, None)
        if old is not None:
            old.conn.close("replaced by a new connection of the same device")
        endpoint = DeviceEndpoint(
            self,
            self._requests,
            conn,
            hub,
            device_id,
            persistent=persistent,
            session=admitted.session,
            desired_version=admitted.device.twin.desired_version,
            identity=admitted.identity,
            credentials=self.credentials,
            proof=ConnectProof(username.hostname, Secret(connect.password) if connect.password else None, conn.peer),
        )
        conn.identity = f"{hub}/{device_id}"
        self._live[key] = endpoint
        if self.on_presence is not None:
            self.on_presence(hub, device_id, True)
        # Runs after the CONNACK (written as soon as this returns).
        self.spawn(endpoint.resume())
        return endpoint

    # -- EndpointHost ---------------------------------------------------------------------------

    def detach(self, endpoint: DeviceEndpoint, reason: str) -> None:
        key = (endpoint.hub, endpoint.device_id)
        if self._live.get(key) is endpoint:
            del self._live[key]
            if self.on_presence is not None:
                self.on_presence(endpoint.hub, endpoint.device_id, False)
        for rid, (owner, future) in list(self._methods.items()):
            if owner is endpoint and not future.done():
                future.set_exception(DeviceNotConnected(f"device {endpoint.device_id} disconnected"))
                del self._methods[rid]

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

    # -- revocation -----------------------------------------------------------------------------

    def enforce_revocations(self, revoked: Revocations) -> int:
        """From now on refuse devices that `revoked` covers, and drop those connected now
        (through `disconnect`, as the hub's other operations do). Returns how many dropped."""
        self._revoked = revoked
        dropped = 0
        for (hub, device_id), endpoint in list(self._live.items()):
            why = revoked_chain(endpoint.conn.peer, revoked)
            if why is not None and self.disconnect(hub, device_id, f"certificate revoked: {why}"):
                log.warning("hub %s: device %s disconnected: %s", hub, device_id, why)
                dropped += 1
        return dropped

    # -- identity changes -----------------------------------------------------------------------

    def recheck(self, hub: str, device_id: str) -> None:
        """LiveDevices.recheck: re-check the device's connection here, if any, in the background."""
        endpoint = self._live.get((hub, device_id))
        if endpoint is not None and not self._stopping:
            self.spawn(self._recheck(endpoint))

    async def _recheck(self, endpoint: DeviceEndpoint) -> None:
        try:
            device = await self._requests.get_device(endpoint.hub, endpoint.device_id)
        except IotdpsError as exc:
            # Not dropped on a store failure: the device's next CONNECT is checked anyway.
            log.warning("hub %s: connection of %s not re-checked: %s", endpoint.hub, endpoint.device_id, exc.message)
            return
        why = recheck_device(device, endpoint.proof)
        if why is not None and self._live.get((endpoint.hub, endpoint.device_id)) is endpoint:
            log.warning(
                "hub %s: device %s disconnected: its identity changed: %s", endpoint.hub, endpoint.device_id, why
            )
            endpoint.conn.close(f"the credential of this connection is no longer accepted: {why}")

    # -- LiveDevices ----------------------------------------------------------------------------

    def is_connected(self, hub: str, device_id: str) -> bool:
        return (hub, device_id) in self._live

    def connected_count(self, hub: str) -> int:
        return sum(1 for live_hub, _device in self._live if live_hub == hub)

    def _connected_by_hub(self) -> dict[str, float]:
        """Devices connected now, per hub served here (read by the metrics when scraped)."""
        counts = dict.fromkeys(self._names.all, 0.0)
        for live_hub, _device in list(self._live):
            counts[live_hub] = counts.get(live_hub, 0.0) + 1
        return counts

    @property
    def connection_count(self) -> int:
        return len(self._live)

    def disconnect(self, hub: str, device_id: str, reason: str) -> bool:
        endpoint = self._live.get((hub, device_id))
        if endpoint is None:
            return False
        endpoint.conn.close(reason)
        return True

    async def push_desired(self, hub: str, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        endpoint = self._live.get((hub, device_id))
        if endpoint is not None and endpoint.push_desired(patch, version):
            await endpoint.saved_after_push()

    def deliver_c2d(self, hub: str, device_id: str) -> None:
        endpoint = self._live.get((hub, device_id))
        if endpoint is not None:
            endpoint.kick_c2d()

    async def call_method(self, hub: str, device_id: str, name: str, payload: bytes, timeout: float) -> tuple[int, Any]:
        endpoint = self._live.get((hub, device_id))
        if endpoint is None or endpoint.closed or not endpoint.conn.open or endpoint.conn.session.closed:
            raise DeviceNotConnected(f"device {device_id} is not connected to {hub}")
        if METHODS_FILTER not in endpoint.subscriptions:
            raise DeviceNotConnected(f"device {device_id} is not listening for direct methods")
        rid = format(next(self._rids), "x")
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._methods[rid] = (endpoint, future)
        try:
            endpoint.conn.publish(format_method_request_topic(name, rid), payload, qos=0)
            answer = await asyncio.wait_for(future, timeout)
            metrics.hub_operation(hub, "method", "answered")
            return answer
        except TimeoutError:
            metrics.hub_operation(hub, "method", "timeout")
            raise MethodTimeout(f"device {device_id} did not answer method {name!r} within {timeout:g} s") from None
        finally:
            self._methods.pop(rid, None)
