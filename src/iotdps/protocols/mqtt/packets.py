"""Typed MQTT 3.1.1 control packets (immutable values; `codec` turns them into bytes and back).

Only the packets a DPS / IoT Hub endpoint speaks are modelled. QoS 2 PUBLISH packets are
decoded (so the server can name the violation) but PUBREC/PUBREL/PUBCOMP are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "SUBACK_FAILURE",
    "ConnAck",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "PubAck",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
]

SUBACK_FAILURE = 0x80
"""SUBACK return code meaning "subscription refused"."""


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes = field(repr=False)
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT. The password never appears in repr: it is a SAS token for DPS and the hub."""

    client_id: str
    keepalive: int = 60
    clean_session: bool = True
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)
    will: Will | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4
    type = PacketType.CONNECT


@dataclass(frozen=True, slots=True)
class ConnAck:
    return_code: int = 0
    session_present: bool = False
    type = PacketType.CONNACK


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes = field(repr=False)
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    type = PacketType.PUBLISH


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    type = PacketType.PUBACK


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]
    type = PacketType.SUBSCRIBE


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]
    type = PacketType.SUBACK


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]
    type = PacketType.UNSUBSCRIBE


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int
    type = PacketType.UNSUBACK


@dataclass(frozen=True, slots=True)
class PingReq:
    type = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    type = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    type = PacketType.DISCONNECT


Packet = (
    Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect
)
