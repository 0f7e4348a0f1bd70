"""The hub's MQTT endpoint: one connected device's PUBLISH/SUBSCRIBE/PUBACK, beside dps_mqtt.py.

The hub's side of each request is `iotdps.hub.device_requests.DeviceRequests`; this module
parses topics and writes replies. The connections a process holds, and the CONNECT that makes
one of these, are hub_live.py's (`EndpointHost` below is what an endpoint needs of it).

Per-connection state is kept small (10,000 idle devices per process is a target): the
subscriptions, the cloud-to-device messages in flight (packet id -> queue seq) and a few
counters. Everything durable is in the store.

Rules (azure-wire-protocol.md section 8):
* Only the Azure filters are granted (C2D of this device, methods, twin responses, desired
  patches, and the certificate-management preview's credential responses), at QoS 0 or 1;
  anything else gets 0x80, as on the real hub.
* Subscriptions of a clean-session-0 device are saved with every change and restored at the
  next CONNECT: the SDK never re-subscribes after a SAS renewal or a network drop.
* Twin responses go to the connection that asked, subscribed or not: 2.14.0 sends its first
  twin GET before it subscribes to `$iothub/twin/res/#`. Credential responses too (the
  certificate requests themselves are hub_credentials.py's).
* Telemetry is PUBACKed by the group-commit writer once stored; every other QoS 1 PUBLISH is
  PUBACKed as soon as it has been handled.
* A topic we do not know, or telemetry for another device id, closes the connection.
* Identity properties are the hub's to set (iotdps.hub.stamps): whatever a device puts in its
  bag under those names is dropped, and the hub stamps the connection's device id, auth method
  and generation id on every message, so a reader can trust them.
* C2D: at most `C2D_WINDOW` messages in flight; a message leaves the queue when the device
  PUBACKs it, so a message in flight when the connection drops is delivered again next time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol

from iotdps.errors import InvalidInput, IotdpsError, NotFound
from iotdps.hub.auth import ConnectProof
from iotdps.hub.device_requests import DeviceRequests
from iotdps.hub.records import CloudMessage, HubSession
from iotdps.hub.twin import sdk_twin_json
from iotdps.jsonload import InvalidJson, load_json
from iotdps.protocols.mqtt.errors import InvalidDeviceRequest
from iotdps.protocols.mqtt.events import PubAckReceived, PublishReceived, Subscribed, Unsubscribed
from iotdps.protocols.mqtt.hub import (
    C2D_FILTER_TEMPLATE,
    CREDENTIALS_RESPONSE_FILTER,
    METHODS_FILTER,
    TWIN_DESIRED_FILTER,
    TWIN_RESPONSE_FILTER,
    CertificateRequest,
    MethodResponse,
    Telemetry,
    TwinGetRequest,
    TwinReportedPatch,
    format_c2d_topic,
    format_desired_patch_topic,
    format_twin_response_topic,
    parse_device_topic,
)
from iotdps.protocols.mqtt.packets import SUBACK_FAILURE
from iotdps.server.hub_credentials import CredentialRequests, response_topic_and_body
from iotdps.server.mqtt_conn import MqttConnection

__all__ = ["C2D_WINDOW", "DeviceEndpoint", "EndpointHost"]

log = logging.getLogger(__name__)

C2D_WINDOW = 16


class EndpointHost(Protocol):
    """What an endpoint needs of the connections it belongs to (hub_live.HubConnections)."""

    def detach(self, endpoint: DeviceEndpoint, reason: str) -> None:
        """The connection closed: forget it, fail the method calls waiting on it."""
        ...

    def method_answered(self, endpoint: DeviceEndpoint, rid: str, status: int, payload: bytes) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in the background; the hub's shutdown waits for it."""
        ...


class DeviceEndpoint:
    # Replies go out as they are written: a telemetry handler may wait for room in the
    # writer's queue, and acknowledgements must not wait behind it.
    holds_replies = False

    def __init__(
        self,
        host: EndpointHost,
        requests: DeviceRequests,
        conn: MqttConnection,
        hub: str,
        device_id: str,
        *,
        persistent: bool,
        session: HubSession | None,
        desired_version: int,
        identity: Mapping[str, str | None] | None = None,
        credentials: CredentialRequests | None = None,
        proof: ConnectProof,
    ) -> None:
        self._host = host
        self._credentials = credentials
        self._requests = requests
        self.conn = conn
        self.hub = hub
        self.device_id = device_id
        # Stamped on every message this connection sends (iotdps.hub.stamps).
        self.identity: Mapping[str, str | None] = identity or {"connection_device_id": device_id}
        self.persistent = persistent  # clean session 0
        # What CONNECT admitted it with, re-checked when the identity changes (hub_live.recheck).
        self.proof = proof
        self.c2d_filter = C2D_FILTER_TEMPLATE.format(device_id=device_id)
        self._allowed = frozenset(
            {self.c2d_filter, METHODS_FILTER, TWIN_RESPONSE_FILTER, TWIN_DESIRED_FILTER, CREDENTIALS_RESPONSE_FILTER}
        )
        self.subscriptions: dict[str, int] = dict(session.subscriptions) if session else {}
        self.desired_version_sent = session.desired_version_sent if session else desired_version
        self._desired_at_connect = desired_version
        self._c2d_inflight: dict[int, int] = {}
        self._c2d_last: int | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pump_again = False
        self.closed = False

    def __repr__(self) -> str:
        return f"DeviceEndpoint({self.hub}/{self.device_id})"

    # -- acknowledgements from the telemetry writer --------------------------------------------

    def acknowledge(self, packet_ids: Sequence[int]) -> None:
        if self.conn.open:
            session = self.conn.session
            self.conn.write(b"".join([session.puback(packet_id) for packet_id in packet_ids]))

    def store_failed(self) -> None:
        self.conn.close("telemetry could not be stored")

    def _ack(self, event: PublishReceived) -> None:
        if event.qos == 1 and event.packet_id is not None:
            self.acknowledge((event.packet_id,))

    # -- MqttEndpoint ---------------------------------------------------------------------------

    async def on_publish(self, conn: MqttConnection, event: PublishReceived) -> None:
        try:
            request = parse_device_topic(event.topic)
        except InvalidDeviceRequest as exc:
            log.info("hub %s: device %s sent %s; closing", self.hub, self.device_id, exc.message)
            conn.close(f"invalid topic: {exc.message}")
            return
        if isinstance(request, Telemetry):
            if request.device_id != self.device_id or request.module_id is not None:
                conn.close("telemetry for another device or module")
                return
            message = self._requests.telemetry_message(
                self.hub,
                self.device_id,
                event.payload,
                request.system_properties,
                request.application_properties,
                self.identity,
                retain=event.retain,
            )
            acker = self if event.qos == 1 else None
            writer = self._requests.writer
            if not writer.offer(message, acker, event.packet_id):
                await writer.submit(message, acker, event.packet_id)
            return
        self._ack(event)
        if isinstance(request, TwinGetRequest):
            await self._twin_get(request.rid)
        elif isinstance(request, TwinReportedPatch):
            await self._twin_patch(request.rid, event.payload)
        elif isinstance(request, MethodResponse):
            self._host.method_answered(self, request.rid, request.status, event.payload)
        elif isinstance(request, CertificateRequest):
            if self._credentials is None:
                body = {"errorCode": 503001, "message": "certificate issuance is not available on this hub"}
                self.answer_credentials(503, request.rid, body)
            else:
                await self._credentials.handle(self, request.rid, event.payload)

    def answer_credentials(self, status: int, rid: str, body: dict[str, Any]) -> None:
        """A credentials response (hub_credentials.Requester), to this connection."""
        topic, payload = response_topic_and_body(status, rid, body)
        self.conn.publish(topic, payload)

    async def _twin_get(self, rid: str) -> None:
        try:
            device = await self._requests.get_device(self.hub, self.device_id)
        except IotdpsError:
            self.conn.publish(format_twin_response_topic(503, rid), b"")
            return
        if device is None:
            self.conn.publish(format_twin_response_topic(404, rid), b"")
            return
        body = json.dumps(sdk_twin_json(device.twin), separators=(",", ":")).encode()
        self.conn.publish(format_twin_response_topic(200, rid), body)

    async def _twin_patch(self, rid: str, payload: bytes) -> None:
        try:
            patch = load_json(payload, what="the reported properties patch")
        except InvalidJson:
            # IoT Hub answers a patch it cannot take with status 400 on the response topic.
            self.conn.publish(format_twin_response_topic(400, rid), b"")
            return
        try:
            version = await self._requests.patch_reported(self.hub, self.device_id, patch)
        except (InvalidInput, NotFound) as exc:
            self.conn.publish(format_twin_response_topic(exc.http_status, rid), b"")
            return
        except IotdpsError:
            self.conn.publish(format_twin_response_topic(503, rid), b"")
            return
        self.conn.publish(format_twin_response_topic(204, rid, version), b"")

    async def on_subscribe(self, conn: MqttConnection, event: Subscribed) -> list[int]:
        granted: list[int] = []
        new: set[str] = set()
        for topic_filter, qos in event.subscriptions:
            if topic_filter not in self._allowed:
                granted.append(SUBACK_FAILURE)
                continue
            level = min(qos, 1)
            if topic_filter not in self.subscriptions:
                new.add(topic_filter)
            self.subscriptions[topic_filter] = level
            granted.append(level)
        if TWIN_DESIRED_FILTER in new:
            # From now on, every desired change is pushed; the device reads the rest by GET.
            device = await self._requests.get_device(self.hub, self.device_id)
            if device is not None:
                self.desired_version_sent = device.twin.desired_version
        if new:
            await self._save()
        if self.c2d_filter in new:
            self.kick_c2d()  # runs after the SUBACK went out
        return granted

    async def on_unsubscribe(self, conn: MqttConnection, event: Unsubscribed) -> None:
        removed = [f for f in event.topics if self.subscriptions.pop(f, None) is not None]
        if removed:
            await self._save()

    async def on_puback(self, conn: MqttConnection, event: PubAckReceived) -> None:
        seq = self._c2d_inflight.pop(event.packet_id, None)
        if seq is not None:
            await self._requests.complete_c2d(self.hub, self.device_id, seq)
            self.kick_c2d()

    async def on_close(self, conn: MqttConnection, reason: str) -> None:
        self.closed = True  # a running delivery sees this after its current step and ends
        self._host.detach(self, reason)

    # -- session --------------------------------------------------------------------------------

    async def _save(self) -> None:
        if self.persistent:
            session = HubSession(self.hub, self.device_id, tuple(self.subscriptions.items()), self.desired_version_sent)
            await self._requests.save_session(session)

    async def resume(self) -> None:
        """After CONNACK: deliver what waited while the device was away."""
        if self.closed:
            return
        if TWIN_DESIRED_FILTER in self.subscriptions and self.desired_version_sent < self._desired_at_connect:
            device = await self._requests.get_device(self.hub, self.device_id)
            if device is not None and not self.closed:
                # The whole desired section, as the SDK itself raises after its reconnect GET.
                self.push_desired(device.twin.desired, device.twin.desired_version)
                await self._save()
        self.kick_c2d()

    # -- pushes from the cloud side -----------------------------------------------------------

    def push_desired(self, patch: Mapping[str, Any], version: int) -> bool:
        if self.closed or TWIN_DESIRED_FILTER not in self.subscriptions:
            return False
        body = json.dumps({**patch, "$version": version}, separators=(",", ":")).encode()
        self.conn.publish(format_desired_patch_topic(version), body, qos=0)
        self.desired_version_sent = max(self.desired_version_sent, version)
        return True

    async def saved_after_push(self) -> None:
        await self._save()

    def kick_c2d(self) -> None:
        """Start delivering queued C2D messages, or make the running delivery look again."""
        if self.closed or self.c2d_filter not in self.subscriptions:
            return
        if self._pump is not None and not self._pump.done():
            self._pump_again = True
            return
        self._pump = self._host.spawn(self._deliver())

    async def _deliver(self) -> None:
        while not self.closed:
            self._pump_again = False
            room = C2D_WINDOW - len(self._c2d_inflight)
            if room > 0:
                try:
                    messages = await self._requests.pending_c2d(self.hub, self.device_id, self._c2d_last, room)
                except IotdpsError as exc:
                    log.warning("hub %s: C2D for %s not read: %s", self.hub, self.device_id, exc.message)
                    return
                for message in messages:
                    if not self._send_c2d(message):
                        return
            if not self._pump_again:
                return

    def _send_c2d(self, message: CloudMessage) -> bool:
        packet_id = self.conn.publish(
            format_c2d_topic(self.device_id, message.system_properties, message.application_properties),
            message.body,
            qos=1,
        )
        if packet_id is None:
            return False
        assert message.seq is not None
        self._c2d_inflight[packet_id] = message.seq
        self._c2d_last = message.seq
        return True
