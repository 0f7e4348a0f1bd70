"""Sans-IO MQTT 3.1.1 server session: one object per client connection.

The listener feeds received bytes to `receive_data(data, now)` and gets typed events back; it
writes whatever the reply methods return and whatever `data_to_send()` holds. No I/O, no clock:
`now` is any monotonic float (seconds) the caller supplies.

State rules (the table `_TRANSITIONS` below is the single source of truth):

    AWAIT_CONNECT --CONNECT--> CONNECTING        anything else first is a violation (§3.1)
    CONNECTING    --accept()--> CONNECTED        CONNACK 0 goes out
    CONNECTING    --refuse(rc)--> CLOSED         CONNACK rc goes out, then drop
    CONNECTED     --PUBLISH/PUBACK/SUBSCRIBE/UNSUBSCRIBE/PINGREQ--> CONNECTED
    CONNECTED     --DISCONNECT--> CLOSED         orderly end (§3.14)
    any open state --close()/keep-alive expiry--> CLOSED
    CLOSED        ignores every later byte and refuses every send

* A second CONNECT, or a packet only a server sends (CONNACK, SUBACK, ...), is a violation:
  there is no row for it. So is a QoS 2 PUBLISH: Azure IoT Hub and DPS close the connection
  (azure-wire-protocol.md 8.2) and so do we.
* While CONNECTING, bytes the client pipelined behind CONNECT (MQTT lets it) stay undecoded in
  the buffer: nothing may be acted on before the application has authenticated the client.
  After `accept()`, call `receive_data(b"", now)` to process them. At most
  `2 * max_packet_size` bytes are held; more is a violation.
* A violation never raises out of `receive_data`: it becomes a `ProtocolViolation` event and
  the session closes. Events for packets decoded before the bad one are still returned.
* Keep-alive (§3.1.2.10): the client must send some packet within 1.5 x keep-alive seconds of
  the previous one; keep-alive 0 disables the check. Before CONNECT, `connect_timeout` applies.
* QoS 1 PUBLISHes we send stay in `inflight` until PUBACKed, so a persistent session can hand
  them to the next connection (construct it with `inflight=`; send `resend_inflight()`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from iotdps.protocols.mqtt._session import SessionCore, TableEnum
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE, encode
from iotdps.protocols.mqtt.errors import MqttProtocolError
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
from iotdps.protocols.mqtt.packets import (
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Packet,
    PacketType,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)

__all__ = ["ServerSession", "ServerState"]


class ServerState(TableEnum):
    AWAIT_CONNECT = "await-connect"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class _Action(TableEnum):
    """Application-driven triggers (the rest of the table is keyed by received packet type)."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    SEND = "send"  # publish / puback / suback / unsuback
    CLOSE = "close"


_TRANSITIONS: dict[tuple[ServerState, PacketType | _Action], ServerState] = {
    (ServerState.AWAIT_CONNECT, PacketType.CONNECT): ServerState.CONNECTING,
    (ServerState.CONNECTING, _Action.ACCEPT): ServerState.CONNECTED,
    (ServerState.CONNECTING, _Action.REFUSE): ServerState.CLOSED,
    (ServerState.CONNECTED, PacketType.PUBLISH): ServerState.CONNECTED,
    (ServerState.CONNECTED, PacketType.PUBACK): ServerState.CONNECTED,
    (ServerState.CONNECTED, PacketType.SUBSCRIBE): ServerState.CONNECTED,
    (ServerState.CONNECTED, PacketType.UNSUBSCRIBE): ServerState.CONNECTED,
    (ServerState.CONNECTED, PacketType.PINGREQ): ServerState.CONNECTED,
    (ServerState.CONNECTED, PacketType.DISCONNECT): ServerState.CLOSED,
    (ServerState.CONNECTED, _Action.SEND): ServerState.CONNECTED,
    (ServerState.AWAIT_CONNECT, _Action.CLOSE): ServerState.CLOSED,
    (ServerState.CONNECTING, _Action.CLOSE): ServerState.CLOSED,
    (ServerState.CONNECTED, _Action.CLOSE): ServerState.CLOSED,
}

_PINGRESP = b"\xd0\x00"


class _Violation(Exception):
    def __init__(self, reason: str, connack_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connack_code = connack_code


class ServerSession(SessionCore[ServerState, _Action]):
    """One client connection, server side. See the module docstring for the rules."""

    _SIDE = "server"
    _NOUN = "session"

    def __init__(
        self,
        now: float,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        connect_timeout: float | None = 30.0,
        inflight: Iterable[Publish] = (),
    ) -> None:
        super().__init__(_TRANSITIONS, ServerState.AWAIT_CONNECT, ServerState.CLOSED, max_packet_size)
        self._created = now
        self._last_rx = now
        self._connect_timeout = connect_timeout
        self._outgoing = bytearray()
        self._connect: Connect | None = None
        for message in inflight:
            if message.qos != 1 or message.packet_id is None:
                raise ValueError("only QoS 1 messages with a packet id can be in flight")
            self._inflight[message.packet_id] = message

    # -- inspection ----------------------------------------------------------------------------

    @property
    def connect_packet(self) -> Connect | None:
        """The CONNECT this session received, once it has."""
        return self._connect

    @property
    def max_packet_size(self) -> int:
        return self._decoder.max_packet_size

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed received bytes; return the events they complete. Never raises for bad input."""
        if self._state is ServerState.CLOSED:
            return []
        events: list[Event] = []
        try:
            self._decoder.append(data)
            # Pull packets one at a time: a packet may move the state to CONNECTING (hold the
            # rest) or CLOSED (ignore the rest).
            while self._pulling():
                packet = self._decoder.next_packet()
                if packet is None:
                    break
                self._last_rx = now
                self._handle(packet, events)
            if self._state is ServerState.CONNECTING and self._decoder.buffered > 2 * self._decoder.max_packet_size:
                raise _Violation("too much data sent before the CONNACK")
        except MqttProtocolError as exc:
            self._violate(exc.message, exc.connack_code, events)
        except _Violation as exc:
            self._violate(exc.reason, exc.connack_code, events)
        return events

    def _pulling(self) -> bool:
        return self._state is ServerState.AWAIT_CONNECT or self._state is ServerState.CONNECTED

    def _violate(self, reason: str, connack_code: int | None, events: list[Event]) -> None:
        if connack_code is not None and self._state is ServerState.AWAIT_CONNECT:
            self._outgoing += encode(ConnAck(connack_code))
        self._close(f"protocol violation: {reason}")
        events.append(ProtocolViolation(reason))

    def _handle(self, packet: Packet, events: list[Event]) -> None:
        kind = packet.type
        if not self._move(kind):
            if self._state is ServerState.AWAIT_CONNECT:
                raise _Violation(f"first packet must be CONNECT, got {kind.name}")
            if kind is PacketType.CONNECT:
                raise _Violation("second CONNECT on one connection")
            raise _Violation(f"{kind.name} is not allowed from a client in state {self._state.value}")
        _HANDLERS[kind](self, packet, events)

    def _on_connect(self, packet: Packet, events: list[Event]) -> None:
        assert isinstance(packet, Connect)
        if not packet.client_id and not packet.clean_session:
            # §3.1.3-8: an empty client id needs clean session; answer CONNACK 2.
            self._outgoing += encode(ConnAck(2))
            raise _Violation("empty client id with clean session 0")
        self._connect = packet
        events.append(Connected(packet))

    def _on_publish(self, packet: Packet, events: list[Event]) -> None:
        assert isinstance(packet, Publish)
        if packet.qos == 2:
            raise _Violation("QoS 2 is not supported")
        events.append(
            PublishReceived(packet.topic, packet.payload, packet.qos, packet.packet_id, packet.retain, packet.dup)
        )

    def _on_puback(self, packet: Packet, events: list[Event]) -> None:
        assert isinstance(packet, PubAck)
        events.append(PubAckReceived(packet.packet_id, self._inflight.pop(packet.packet_id, None)))

    def _on_subscribe(self, packet: Packet, events: list[Event]) -> None:
        assert isinstance(packet, Subscribe)
        events.append(Subscribed(packet.subscriptions, packet.packet_id))

    def _on_unsubscribe(self, packet: Packet, events: list[Event]) -> None:
        assert isinstance(packet, Unsubscribe)
        events.append(Unsubscribed(packet.topics, packet.packet_id))

    def _on_pingreq(self, packet: Packet, events: list[Event]) -> None:
        self._outgoing += _PINGRESP
        events.append(PingHandled())

    def _on_disconnect(self, packet: Packet, events: list[Event]) -> None:
        self._close("client sent DISCONNECT")
        events.append(Disconnected("client sent DISCONNECT"))

    # -- sending -------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes the session produced on its own (PINGRESP, CONNACK on a bad CONNECT)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def accept(self, return_code: int = 0, session_present: bool = False) -> bytes:
        """CONNACK 0. Then call `receive_data(b"", now)` for packets pipelined behind CONNECT."""
        if return_code != 0:
            raise ValueError("accept() sends return code 0; use refuse() for the others")
        self._app(_Action.ACCEPT)
        return encode(ConnAck(0, session_present))

    def refuse(self, return_code: int) -> bytes:
        """CONNACK with a refusal code (1..5) and close. 4/5 make the Azure SDK raise CredentialError."""
        if not 1 <= return_code <= 255:
            raise ValueError("a refusal needs a non-zero CONNACK return code")
        self._app(_Action.REFUSE)
        self._close(f"refused with CONNACK {return_code}")
        return encode(ConnAck(return_code))

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bytes:
        """PUBLISH to the client; QoS 1 messages get a packet id and stay in `inflight`."""
        return self.publish_with_id(topic, payload, qos, retain)[1]

    def publish_with_id(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> tuple[int | None, bytes]:
        """As `publish`, also returning the packet id of a QoS 1 message (None for QoS 0)."""
        return self._publish(_Action.SEND, topic, payload, qos, retain)

    def resend_inflight(self) -> bytes:
        """Every in-flight message again, DUP set, oldest first (for a resumed session, §4.4)."""
        self._app(_Action.SEND)
        return b"".join(
            encode(Publish(m.topic, m.payload, 1, m.retain, True, m.packet_id)) for m in self._inflight.values()
        )

    def puback(self, packet_id: int) -> bytes:
        self._app(_Action.SEND)
        return encode(PubAck(packet_id))

    def suback(self, packet_id: int, granted: Sequence[int]) -> bytes:
        """`granted` holds one code per requested filter: 0, 1 or `SUBACK_FAILURE` (0x80)."""
        for code in granted:
            if code not in (0, 1, SUBACK_FAILURE):
                raise ValueError(f"cannot grant {code}: the server grants QoS 0 or 1, or 0x80")
        self._app(_Action.SEND)
        return encode(SubAck(packet_id, tuple(granted)))

    def unsuback(self, packet_id: int) -> bytes:
        self._app(_Action.SEND)
        return encode(UnsubAck(packet_id))

    def close(self, reason: str = "closed by server") -> None:
        """Mark the session closed (socket gone, server shutting down). Idempotent."""
        if self._state is not ServerState.CLOSED:
            self._app(_Action.CLOSE)
            self._close(reason)

    # -- time ----------------------------------------------------------------------------------

    def keepalive_deadline(self, now: float | None = None) -> float | None:
        """When the connection must be dropped if nothing more arrives; None if never.

        `now` is accepted for call-site symmetry with `check_timeouts`; the deadline only
        depends on when the last packet arrived.
        """
        if self._state is ServerState.CLOSED:
            return None
        if self._connect is None:
            if self._connect_timeout is None:
                return None
            return self._created + self._connect_timeout
        if self._connect.keepalive == 0:
            return None
        return self._last_rx + 1.5 * self._connect.keepalive

    def check_timeouts(self, now: float) -> bool:
        """True when the connection should be closed (now, or already)."""
        if self._state is ServerState.CLOSED:
            return True
        deadline = self.keepalive_deadline(now)
        if deadline is not None and now >= deadline:
            self._close("keep-alive expired" if self._connect else "no CONNECT in time")
            return True
        return False


_Handler = Callable[[ServerSession, Packet, list[Event]], None]

_HANDLERS: dict[PacketType, _Handler] = {
    PacketType.CONNECT: ServerSession._on_connect,
    PacketType.PUBLISH: ServerSession._on_publish,
    PacketType.PUBACK: ServerSession._on_puback,
    PacketType.SUBSCRIBE: ServerSession._on_subscribe,
    PacketType.UNSUBSCRIBE: ServerSession._on_unsubscribe,
    PacketType.PINGREQ: ServerSession._on_pingreq,
    PacketType.DISCONNECT: ServerSession._on_disconnect,
}
