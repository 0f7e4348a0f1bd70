"""Events the MQTT session machines hand to the application (server and client side)."""

from __future__ import annotations

from dataclasses import dataclass, field

from iotdps.protocols.mqtt.packets import Connect, Publish

__all__ = [
    "ConnAckReceived",
    "Connected",
    "Disconnected",
    "Event",
    "PingHandled",
    "PingRespReceived",
    "ProtocolViolation",
    "PubAckReceived",
    "PublishReceived",
    "SubAckReceived",
    "Subscribed",
    "UnsubAckReceived",
    "Unsubscribed",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """Server side: the client sent CONNECT; answer with `accept()` or `refuse()`."""

    packet: Connect


@dataclass(frozen=True, slots=True)
class PublishReceived:
    topic: str
    payload: bytes = field(repr=False)
    qos: int
    packet_id: int | None
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Server side: answer with `suback(packet_id, granted)`."""

    subscriptions: tuple[tuple[str, int], ...]
    packet_id: int


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Server side: answer with `unsuback(packet_id)`."""

    topics: tuple[str, ...]
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubAckReceived:
    """The peer acknowledged our QoS 1 PUBLISH. `message` is what it acknowledged, or None
    when the id was not in flight (a late or duplicate PUBACK, which MQTT tolerates)."""

    packet_id: int
    message: Publish | None = None


@dataclass(frozen=True, slots=True)
class PingHandled:
    """Server side: a PINGREQ arrived; the PINGRESP is waiting in `data_to_send()`."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is over in an orderly way (DISCONNECT received, refused, timed out)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; the session is closed. Drop the connection after writing
    whatever `data_to_send()` holds (a CONNACK for an unsupported protocol level)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnAckReceived:
    return_code: int
    session_present: bool


@dataclass(frozen=True, slots=True)
class SubAckReceived:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnsubAckReceived:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingRespReceived:
    pass


Event = (
    Connected
    | PublishReceived
    | Subscribed
    | Unsubscribed
    | PubAckReceived
    | PingHandled
    | Disconnected
    | ProtocolViolation
    | ConnAckReceived
    | SubAckReceived
    | UnsubAckReceived
    | PingRespReceived
)
