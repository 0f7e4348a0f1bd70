"""Our own sans-IO MQTT 3.1.1: codec, server and client sessions, Azure DPS and IoT Hub topics.

See docs/architecture.md for why no library: DPS and hub topics are per-connection
request/response, and no maintained Python package parses 3.1.1 server-side without a broker's
pub/sub model in the way.
"""

from __future__ import annotations

from iotdps.protocols.mqtt.client import ClientSession, ClientState
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE, Decoder, decode, encode
from iotdps.protocols.mqtt.errors import MqttProtocolError, MqttStateError
from iotdps.protocols.mqtt.events import (
    ConnAckReceived,
    Connected,
    Disconnected,
    Event,
    PingHandled,
    PingRespReceived,
    ProtocolViolation,
    PubAckReceived,
    PublishReceived,
    SubAckReceived,
    Subscribed,
    UnsubAckReceived,
    Unsubscribed,
)
from iotdps.protocols.mqtt.packets import (
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from iotdps.protocols.mqtt.server import ServerSession, ServerState
from iotdps.protocols.mqtt.topics import is_valid_topic_filter, is_valid_topic_name, topic_matches

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "SUBACK_FAILURE",
    "ClientSession",
    "ClientState",
    "ConnAck",
    "ConnAckReceived",
    "Connect",
    "Connected",
    "Decoder",
    "Disconnect",
    "Disconnected",
    "Event",
    "MqttProtocolError",
    "MqttStateError",
    "Packet",
    "PacketType",
    "PingHandled",
    "PingReq",
    "PingResp",
    "PingRespReceived",
    "ProtocolViolation",
    "PubAck",
    "PubAckReceived",
    "Publish",
    "PublishReceived",
    "ServerSession",
    "ServerState",
    "SubAck",
    "SubAckReceived",
    "Subscribe",
    "Subscribed",
    "UnsubAck",
    "UnsubAckReceived",
    "Unsubscribe",
    "Unsubscribed",
    "Will",
    "decode",
    "encode",
    "is_valid_topic_filter",
    "is_valid_topic_name",
    "topic_matches",
]
