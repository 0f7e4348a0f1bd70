"""What the client and server MQTT sessions share: applying a transition table, closing with
the first reason given, and QoS 1 messages in flight under packet ids.

Each side keeps its own states, triggers and `_TRANSITIONS` table (client.py, server.py); this
base only applies it, so the rules stay readable where they are declared. Nothing here adds
indirection beyond one method call: the server session is on every connection's hot path.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Generic, TypeVar

from iotdps.protocols.mqtt.codec import Decoder, encode
from iotdps.protocols.mqtt.errors import MqttStateError
from iotdps.protocols.mqtt.packets import PacketType, Publish
from iotdps.protocols.mqtt.topics import is_valid_topic_name

__all__ = ["SessionCore", "TableEnum"]


class TableEnum(enum.Enum):
    """Base of the states and triggers a transition table is keyed by.

    Members are singletons, so identity hashing is right; Enum's own __hash__ hashes the
    member's name in Python code, twice per table lookup and so on every packet."""

    __hash__ = object.__hash__


S = TypeVar("S", bound=enum.Enum)  # the side's states
A = TypeVar("A", bound=enum.Enum)  # the side's application-driven triggers


class SessionCore(Generic[S, A]):
    """Base of ClientSession and ServerSession (private: not part of the package surface)."""

    _SIDE: ClassVar[str]  # "client" or "server", in error messages
    _NOUN: ClassVar[str]  # how `_app` names the session in its error

    def __init__(
        self,
        transitions: Mapping[tuple[S, PacketType | A], S],
        initial: S,
        closed: S,
        max_packet_size: int,
    ) -> None:
        self._transitions = transitions
        self._state = initial
        self._closed_state = closed
        self._decoder = Decoder(max_packet_size)
        self._close_reason: str | None = None
        self._inflight: dict[int, Publish] = {}
        # SUBSCRIBE / UNSUBSCRIBE ids awaiting their answer (only a client sends those).
        self._pending_acks: set[int] = set()
        self._next_id = 1

    @property
    def state(self) -> S:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is self._closed_state

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def inflight(self) -> Mapping[int, Publish]:
        """QoS 1 messages sent and not yet PUBACKed, by packet id, oldest first."""
        return MappingProxyType(self._inflight)

    def _move(self, trigger: PacketType | A) -> bool:
        """Take the table's row for (state, trigger); False when there is none."""
        new = self._transitions.get((self._state, trigger))
        if new is None:
            return False
        self._state = new
        return True

    def _app(self, action: A) -> None:
        if not self._move(action):
            raise MqttStateError(f"cannot {action.value} a {self._NOUN} in state {self._state.value}")

    def _close(self, reason: str) -> None:
        self._state = self._closed_state
        if self._close_reason is None:
            self._close_reason = reason

    def _allocate_id(self) -> int:
        """A packet id neither in flight nor awaiting an answer, round-robin from the last one."""
        if len(self._inflight) + len(self._pending_acks) >= 0xFFFF:
            raise MqttStateError("all 65535 packet ids are in use")
        pid = self._next_id
        while pid in self._inflight or pid in self._pending_acks:
            pid = pid % 0xFFFF + 1
        self._next_id = pid % 0xFFFF + 1
        return pid

    def _publish(self, send: A, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[int | None, bytes]:
        """PUBLISH at QoS 0 or 1 (`send` is the side's SEND trigger); QoS 1 stays in flight."""
        if qos not in (0, 1):
            raise ValueError(f"the {self._SIDE} publishes at QoS 0 or 1 only")
        if not is_valid_topic_name(topic):
            raise ValueError("a PUBLISH topic must be non-empty and without wildcards")
        self._app(send)
        if qos == 0:
            return None, encode(Publish(topic, payload, 0, retain))
        pid = self._allocate_id()
        message = Publish(topic, payload, 1, retain, False, pid)
        data = encode(message)
        self._inflight[pid] = message
        return pid, data
