"""One MQTT connection: the asyncio glue between a byte transport and the sans-IO session.

The transport is either the TLS seam (MQTT on 8883) or a websocket bridge (MQTT over
`/$iothub/websocket` on 443); both look like an asyncio Transport. The first packet, CONNECT,
picks the endpoint (DPS or a hub) through the `Router`; from then on every event goes to
that endpoint, in arrival order, one at a time: a register publish must not overtake the
subscribe sent before it, and handlers are async (they touch the store).

Keep-alive is enforced by a timer armed at the session's deadline. A protocol violation or
a handler error closes this connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from iotdps.evidence import PeerIdentity
from iotdps.protocols.mqtt.events import (
    Connected,
    Disconnected,
    Event,
    PingHandled,
    ProtocolViolation,
    PubAckReceived,
    PublishReceived,
    Subscribed,
    Unsubscribed,
)
from iotdps.protocols.mqtt.packets import Connect
from iotdps.protocols.mqtt.server import ServerSession
from iotdps.server.tls_transport import PEER_INFO_KEY, TlsAppTransport

__all__ = ["MqttConnection", "MqttEndpoint", "Router"]

log = logging.getLogger(__name__)

# CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_NOT_AUTHORIZED = 5


class MqttEndpoint(Protocol):
    """What a DPS or hub endpoint does with one accepted connection."""

    # True: what the connection writes while handling a batch of packets leaves in one write
    # when the batch is done (see MqttConnection._run), so a pipelined CONNECT, SUBSCRIBE and
    # register reach the device as one flight with their answers. False for an endpoint whose
    # handlers may wait long (the hub's telemetry waits for room in its writer's queue).
    holds_replies: bool

    async def on_publish(self, conn: MqttConnection, event: PublishReceived) -> None: ...
    async def on_subscribe(self, conn: MqttConnection, event: Subscribed) -> list[int]: ...
    async def on_unsubscribe(self, conn: MqttConnection, event: Unsubscribed) -> None: ...
    async def on_puback(self, conn: MqttConnection, event: PubAckReceived) -> None: ...
    async def on_close(self, conn: MqttConnection, reason: str) -> None: ...


class Router(Protocol):
    async def __call__(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        """Authenticate CONNECT: an endpoint to accept, or a CONNACK refusal code."""
        ...


class MqttConnection(asyncio.Protocol):
    def __init__(
        self,
        router: Router,
        *,
        max_packet_size: int,
        connect_timeout: float = 30.0,
        on_closed: Callable[[MqttConnection], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._clock = clock
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop = asyncio.get_running_loop()
        self.session = ServerSession(clock(), max_packet_size=max_packet_size, connect_timeout=connect_timeout)
        self._transport: asyncio.Transport | None = None
        self._endpoint: MqttEndpoint | None = None
        # What each data_received parsed, as one item: a burst of telemetry costs one hand-over
        # to the worker, not one per packet. None tells the worker to stop.
        # (A deque and one future rather than an asyncio.Queue: a queue, its Event and its
        # loop lookup per connection cost more than the DPS exchange's own parsing.)
        self._inbox: deque[list[Event] | None] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        # Writes held while the worker handles a batch (None: not holding); see _run.
        self._held: list[bytes] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the deadline _timer was set for
        self._on_closed = on_closed
        self._closed = False
        self._close_reason = "closed"
        self.peer: PeerIdentity | None = None
        self.peername: object = None
        # What the endpoint learnt at CONNECT (registration id, device id...), for logs.
        self.identity: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.peer = transport.get_extra_info(PEER_INFO_KEY)
        self.peername = transport.get_extra_info("peername")
        self._worker = self._loop.create_task(self._run())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        events = self.session.receive_data(data, self._clock())
        self._flush_session()
        if events:
            self._post(events)
        # Activity only moves the keep-alive deadline later, and a timer that fires early
        # re-arms itself for the rest, so re-arm only when the deadline came nearer (CONNECT
        # with a keep-alive shorter than the connect timeout): one timer per packet cost more
        # than the packet's parsing.
        deadline = self.session.keepalive_deadline()
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            self._arm_timer()

    def eof_received(self) -> bool | None:
        self.close("peer closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.close("connection lost")

    # -- for endpoints ------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not self._closed and self._transport is not None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._held is not None:
            self._held.append(data)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _release(self) -> None:
        """Stop holding writes and send what was held, in one write."""
        held, self._held = self._held, None
        if held:
            self.write(held[0] if len(held) == 1 else b"".join(held))

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> int | None:
        """Send a PUBLISH; returns the packet id of a QoS 1 message (None for QoS 0 / closed)."""
        # The session closes when it reads DISCONNECT, before the worker gets to close the
        # connection: a C2D kick, desired patch or method in between finds it ended, not open.
        if not self.open or self.session.closed:
            return None
        packet_id, data = self.session.publish_with_id(topic, payload, qos)
        self.write(data)
        return packet_id

    def close(self, reason: str = "closed by server", *, goodbye: bool = False) -> None:
        """Close after what was written. `goodbye`: the client ended the session with MQTT
        DISCONNECT, so TLS's close_notify is skipped (see TlsAppTransport.close_after_goodbye)."""
        if self._closed:
            return
        self._closed = True
        self._release()
        self.session.close(reason)
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if goodbye and isinstance(transport, TlsAppTransport):
                transport.close_after_goodbye()
            else:
                transport.close()
        self._close_reason = reason
        self._post(None)  # lets the worker run on_close and stop

    # -- internals ----------------------------------------------------------------------------

    def _flush_session(self) -> None:
        self.write(self.session.data_to_send())

    def _post(self, item: list[Event] | None) -> None:
        """Hand the worker one read's events (None: stop), in arrival order."""
        self._inbox.append(item)
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next(self) -> list[Event] | None:
        """Wait for the next item of the inbox."""
        while not self._inbox:
            self._inbox_waiter = self._loop.create_future()
            try:
                await self._inbox_waiter
            finally:
                self._inbox_waiter = None
        return self._inbox.popleft()

    def _arm_timer(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.session.keepalive_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self._clock())
        self._timer_at = deadline
        self._timer = self._loop.call_later(delay + 0.01, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.session.check_timeouts(self._clock()):
            self.close(self.session.close_reason or "keep-alive expired")
        else:
            self._arm_timer()

    async def _run(self) -> None:
        try:
            running = True
            while running:
                if not self._inbox:
                    self._release()  # nothing more to answer for now: send the batch's replies
                events = self._inbox.popleft() if self._inbox else await self._next()
                if events is None:
                    break
                endpoint = self._endpoint
                if endpoint is None or endpoint.holds_replies:
                    # One write per batch, not per packet: one TLS record and one send for
                    # CONNACK, SUBACK, PUBACK and the register reply of a pipelining device.
                    # A DPS handler waits at most the direct-answer budget (dps_runner).
                    if self._held is None:
                        self._held = []
                else:
                    self._release()
                for event in events:
                    if not await self._dispatch(event):
                        running = False
                        break
        except Exception:  # a handler bug must cost one connection, never the listener
            log.exception("MQTT connection %s (%s) failed", self.peername, self.identity)
            self.close("internal error")
        finally:
            reason = self._close_reason
            if self._endpoint is not None:
                with contextlib.suppress(Exception):
                    await self._endpoint.on_close(self, reason)
            if self._on_closed is not None:
                self._on_closed(self)

    async def _dispatch(self, event: Event) -> bool:
        """Handle one event; False stops the worker."""
        if isinstance(event, Connected):
            result = await self._router(self, event.packet)
            if not self.open:
                return False
            if isinstance(result, int):
                self.write(self.session.refuse(result))
                self.close(f"refused with CONNACK {result}")
                return False
            self._endpoint = result
            self.write(self.session.accept())
            # Packets the client pipelined behind CONNECT were held until now.
            pending = self.session.receive_data(b"", self._clock())
            if pending:
                self._post(pending)
            self._flush_session()
            return True
        if isinstance(event, ProtocolViolation | Disconnected):
            self._flush_session()
            self.close(event.reason, goodbye=isinstance(event, Disconnected))
            return False
        if isinstance(event, PingHandled):
            return True
        endpoint = self._endpoint
        if endpoint is None:  # the session only emits these after accept()
            return True
        if isinstance(event, PublishReceived):
            await endpoint.on_publish(self, event)
        elif isinstance(event, Subscribed):
            granted = await endpoint.on_subscribe(self, event)
            self.write(self.session.suback(event.packet_id, granted))
        elif isinstance(event, Unsubscribed):
            await endpoint.on_unsubscribe(self, event)
            self.write(self.session.unsuback(event.packet_id))
        elif isinstance(event, PubAckReceived):
            await endpoint.on_puback(self, event)
        return self.open
