"""Sans-IO MQTT 3.1.1 client session (our device client and the load generator).

State rules (the table `_TRANSITIONS` below is the single source of truth):

    IDLE        --connect()--> CONNECTING
    CONNECTING  --send (subscribe/publish/...)--> CONNECTING   MQTT lets a client pipeline (§3.1.4)
    CONNECTING  --CONNACK--> CONNECTED (code 0) or CLOSED (refused)
    CONNECTED   --PUBLISH/PUBACK/SUBACK/UNSUBACK/PINGRESP--> CONNECTED
    CONNECTED   --disconnect()--> CLOSED
    any open state --close()--> CLOSED

Anything received without a row (a packet before CONNACK, a packet only a client sends, a QoS 2
PUBLISH) is a `ProtocolViolation` event and closes the session; `receive_data` never raises for
bad input. QoS 1 messages we publish stay in `inflight` until their PUBACK.
"""

from __future__ import annotations

from collections.abc import Sequence

from iotdps.protocols.mqtt._session import SessionCore, TableEnum
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE, encode
from iotdps.protocols.mqtt.errors import MqttProtocolError
from iotdps.protocols.mqtt.events import (
    ConnAckReceived,
    Disconnected,
    Event,
    PingRespReceived,
    ProtocolViolation,
    PubAckReceived,
    PublishReceived,
    SubAckReceived,
    UnsubAckReceived,
)
from iotdps.protocols.mqtt.packets import (
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
    Will,
)
from iotdps.protocols.mqtt.topics import is_valid_topic_filter

__all__ = ["ClientSession", "ClientState"]


class ClientState(TableEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class _Action(TableEnum):
    CONNECT = "connect"
    SEND = "send"
    DISCONNECT = "disconnect"
    CLOSE = "close"


_TRANSITIONS: dict[tuple[ClientState, PacketType | _Action], ClientState] = {
    (ClientState.IDLE, _Action.CONNECT): ClientState.CONNECTING,
    (ClientState.CONNECTING, _Action.SEND): ClientState.CONNECTING,
    (ClientState.CONNECTING, PacketType.CONNACK): ClientState.CONNECTED,  # refused CONNACKs close in the handler
    (ClientState.CONNECTED, _Action.SEND): ClientState.CONNECTED,
    (ClientState.CONNECTED, PacketType.PUBLISH): ClientState.CONNECTED,
    (ClientState.CONNECTED, PacketType.PUBACK): ClientState.CONNECTED,
    (ClientState.CONNECTED, PacketType.SUBACK): ClientState.CONNECTED,
    (ClientState.CONNECTED, PacketType.UNSUBACK): ClientState.CONNECTED,
    (ClientState.CONNECTED, PacketType.PINGRESP): ClientState.CONNECTED,
    (ClientState.CONNECTING, _Action.DISCONNECT): ClientState.CLOSED,
    (ClientState.CONNECTED, _Action.DISCONNECT): ClientState.CLOSED,
    (ClientState.IDLE, _Action.CLOSE): ClientState.CLOSED,
    (ClientState.CONNECTING, _Action.CLOSE): ClientState.CLOSED,
    (ClientState.CONNECTED, _Action.CLOSE): ClientState.CLOSED,
}


class ClientSession(SessionCore[ClientState, _Action]):
    """One connection, client side."""

    _SIDE = "client"
    _NOUN = "client session"

    def __init__(self, *, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        super().__init__(_TRANSITIONS, ClientState.IDLE, ClientState.CLOSED, max_packet_size)

    # -- sending -------------------------------------------------------------------------------

    def connect(
        self,
        client_id: str,
        username: str | None = None,
        password: str | bytes | None = None,
        keepalive: int = 60,
        clean_session: bool = True,
        will: Will | None = None,
    ) -> bytes:
        if not 0 <= keepalive <= 0xFFFF:
            raise ValueError("keep-alive must be 0..65535 seconds")
        raw_password = password.encode("utf-8") if isinstance(password, str) else password
        packet = Connect(client_id, keepalive, clean_session, username, raw_password, will)
        data = encode(packet)
        self._app(_Action.CONNECT)
        return data

    def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> tuple[int, bytes]:
        """SUBSCRIBE; returns (packet id, bytes). The SubAckReceived event carries the same id."""
        for topic_filter, qos in subscriptions:
            if not is_valid_topic_filter(topic_filter) or qos not in (0, 1, 2):
                raise ValueError(f"invalid subscription {topic_filter!r} at QoS {qos}")
        self._app(_Action.SEND)
        pid = self._allocate_id()
        data = encode(Subscribe(pid, tuple(subscriptions)))
        self._pending_acks.add(pid)
        return pid, data

    def unsubscribe(self, topics: Sequence[str]) -> tuple[int, bytes]:
        self._app(_Action.SEND)
        pid = self._allocate_id()
        data = encode(Unsubscribe(pid, tuple(topics)))
        self._pending_acks.add(pid)
        return pid, data

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> tuple[int | None, bytes]:
        """PUBLISH at QoS 0 or 1; returns (packet id or None, bytes)."""
        return self._publish(_Action.SEND, topic, payload, qos, retain)

    def puback(self, packet_id: int) -> bytes:
        self._app(_Action.SEND)
        return encode(PubAck(packet_id))

    def ping(self) -> bytes:
        self._app(_Action.SEND)
        return b"\xc0\x00"

    def disconnect(self) -> bytes:
        self._app(_Action.DISCONNECT)
        self._close("client sent DISCONNECT")
        return b"\xe0\x00"

    def close(self, reason: str = "closed by client") -> None:
        if self._state is not ClientState.CLOSED:
            self._app(_Action.CLOSE)
            self._close(reason)

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self._state is ClientState.CLOSED:
            return []
        events: list[Event] = []
        try:
            self._decoder.append(data)
            while not self.closed:
                packet = self._decoder.next_packet()
                if packet is None:
                    break
                self._handle(packet, events)
        except MqttProtocolError as exc:
            self._close(f"protocol violation: {exc.message}")
            events.append(ProtocolViolation(exc.message))
        return events

    def _handle(self, packet: Packet, events: list[Event]) -> None:
        if not self._move(packet.type):
            raise MqttProtocolError(f"{packet.type.name} is not allowed from a server in state {self._state.value}")
        if isinstance(packet, ConnAck):
            events.append(ConnAckReceived(packet.return_code, packet.session_present))
            if packet.return_code:
                self._close(f"server refused with CONNACK {packet.return_code}")
                events.append(Disconnected(f"server refused with CONNACK {packet.return_code}"))
        elif isinstance(packet, Publish):
            if packet.qos == 2:
                raise MqttProtocolError("QoS 2 is not supported")
            events.append(
                PublishReceived(packet.topic, packet.payload, packet.qos, packet.packet_id, packet.retain, packet.dup)
            )
        elif isinstance(packet, PubAck):
            events.append(PubAckReceived(packet.packet_id, self._inflight.pop(packet.packet_id, None)))
        elif isinstance(packet, SubAck):
            self._pending_acks.discard(packet.packet_id)
            events.append(SubAckReceived(packet.packet_id, packet.return_codes))
        elif isinstance(packet, UnsubAck):
            self._pending_acks.discard(packet.packet_id)
            events.append(UnsubAckReceived(packet.packet_id))
        else:
            events.append(PingRespReceived())
