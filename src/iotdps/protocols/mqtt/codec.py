"""MQTT 3.1.1 wire codec: `encode(packet) -> bytes` and an incremental `Decoder`.

The decoder is strict: anything the spec calls malformed (and a few things it calls a protocol
violation) raises one `MqttProtocolError`. After that the byte stream cannot be resynchronised,
so the decoder stays failed and re-raises on every later call.

Performance notes (this is the telemetry hot path): when the decoder holds no partial packet,
`feed` parses straight out of a memoryview of the caller's chunk and keeps only the tail; a
partial packet is accumulated in one bytearray that is compacted lazily. Fields are read by
indexing and slicing, never byte by byte, except the at most 4-byte remaining length.
"""

from __future__ import annotations

from collections.abc import Callable

from iotdps.protocols.mqtt.errors import MqttProtocolError
from iotdps.protocols.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
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
from iotdps.protocols.mqtt.topics import is_valid_topic_filter, is_valid_topic_name

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "Decoder",
    "decode",
    "encode",
]

MAX_REMAINING_LENGTH = 268_435_455
"""The largest remaining length four variable-length bytes can carry."""

DEFAULT_MAX_PACKET_SIZE = 262_144 + 1024
"""IoT Hub's 256 KiB message limit plus room for a long topic and the headers."""

_VALID_SUBACK_CODES = frozenset((0, 1, 2, 0x80))

# ---------------------------------------------------------------------------------------------
# encoding


def _remaining_length(n: int) -> bytes:
    if n < 128:
        return _SMALL_LENGTHS[n]
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(f"packet body of {n} bytes is larger than MQTT allows")
    out = bytearray()
    while n:
        digit = n & 0x7F
        n >>= 7
        out.append(digit | 0x80 if n else digit)
    return bytes(out)


_SMALL_LENGTHS = tuple(bytes((i,)) for i in range(128))


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65535 bytes of UTF-8")
    return len(raw).to_bytes(2, "big") + raw


def _bin(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("MQTT binary fields are at most 65535 bytes")
    return len(value).to_bytes(2, "big") + value


def _pid(packet_id: int) -> bytes:
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} is outside 1..65535")
    return packet_id.to_bytes(2, "big")


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def _enc_connect(p: Connect) -> bytes:
    flags = 0x02 if p.clean_session else 0
    parts = [_str(p.protocol_name), bytes((p.protocol_level,)), b"", p.keepalive.to_bytes(2, "big")]
    parts.append(_str(p.client_id))
    if p.will is not None:
        if p.will.qos not in (0, 1, 2):
            raise ValueError("will QoS must be 0, 1 or 2")
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        parts.append(_str(p.will.topic))
        parts.append(_bin(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        parts.append(_str(p.username))
    if p.password is not None:
        if p.username is None:
            raise ValueError("MQTT 3.1.1 forbids a password without a username")
        flags |= 0x40
        parts.append(_bin(p.password))
    parts[2] = bytes((flags,))
    return _frame(0x10, b"".join(parts))


def _enc_connack(p: ConnAck) -> bytes:
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _enc_publish(p: Publish) -> bytes:
    if p.qos not in (0, 1, 2):
        raise ValueError("PUBLISH QoS must be 0, 1 or 2")
    topic = p.topic.encode("utf-8")
    tlen = len(topic)
    if tlen > 0xFFFF:
        raise ValueError("MQTT strings are at most 65535 bytes of UTF-8")
    first = 0x30 | (p.qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    if p.qos:
        if p.packet_id is None:
            raise ValueError("QoS 1 and 2 PUBLISH need a packet id")
        pid = _pid(p.packet_id)
        n = 4 + tlen + len(p.payload)
        return b"".join((bytes((first,)), _remaining_length(n), tlen.to_bytes(2, "big"), topic, pid, p.payload))
    n = 2 + tlen + len(p.payload)
    return b"".join((bytes((first,)), _remaining_length(n), tlen.to_bytes(2, "big"), topic, p.payload))


def _enc_puback(p: PubAck) -> bytes:
    return b"\x40\x02" + _pid(p.packet_id)


def _enc_subscribe(p: Subscribe) -> bytes:
    if not p.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    parts = [_pid(p.packet_id)]
    for topic_filter, qos in p.subscriptions:
        parts.append(_str(topic_filter))
        parts.append(bytes((qos,)))
    return _frame(0x82, b"".join(parts))


def _enc_suback(p: SubAck) -> bytes:
    if not p.return_codes:
        raise ValueError("SUBACK needs at least one return code")
    return _frame(0x90, _pid(p.packet_id) + bytes(p.return_codes))


def _enc_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    return _frame(0xA2, _pid(p.packet_id) + b"".join(_str(t) for t in p.topics))


def _enc_unsuback(p: UnsubAck) -> bytes:
    return b"\xb0\x02" + _pid(p.packet_id)


_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"
_DISCONNECT = b"\xe0\x00"

_ENCODERS: dict[type, Callable[..., bytes]] = {
    Connect: _enc_connect,
    ConnAck: _enc_connack,
    Publish: _enc_publish,
    PubAck: _enc_puback,
    Subscribe: _enc_subscribe,
    SubAck: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    UnsubAck: _enc_unsuback,
    PingReq: lambda _p: _PINGREQ,
    PingResp: lambda _p: _PINGRESP,
    Disconnect: lambda _p: _DISCONNECT,
}


def encode(packet: Packet) -> bytes:
    """Serialise one packet. A packet MQTT cannot carry (bad id, oversize field) is a ValueError:
    that is a programming error on our side, not bad input from a peer."""
    return _ENCODERS[type(packet)](packet)


# ---------------------------------------------------------------------------------------------
# decoding
#
# Each parser gets the fixed-header flags and a memoryview of exactly the remaining-length
# bytes, and must consume all of them.


def _fail(message: str) -> MqttProtocolError:
    return MqttProtocolError(f"malformed MQTT packet: {message}")


def _u16(body: memoryview, pos: int) -> int:
    if pos + 2 > len(body):
        raise _fail("packet ends inside a two-byte field")
    return (body[pos] << 8) | body[pos + 1]


def _read_bin(body: memoryview, pos: int) -> tuple[memoryview, int]:
    n = _u16(body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise _fail("a length-prefixed field runs past the end of the packet")
    return body[pos + 2 : end], end


def _read_str(body: memoryview, pos: int) -> tuple[str, int]:
    raw, end = _read_bin(body, pos)
    try:
        value = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise _fail("a string is not valid UTF-8") from None
    if "\x00" in value:
        raise _fail("a string contains U+0000")
    return value, end


def _packet_id(body: memoryview, pos: int) -> int:
    pid = _u16(body, pos)
    if pid == 0:
        raise _fail("packet id 0")
    return pid


def _no_flags(flags: int, name: str) -> None:
    if flags:
        raise _fail(f"reserved flags set on {name}")


def _parse_connect(flags: int, body: memoryview) -> Connect:
    _no_flags(flags, "CONNECT")
    name, pos = _read_str(body, 0)
    if name != "MQTT":
        raise _fail(f"protocol name {name[:16]!r} is not 'MQTT'")
    if pos + 4 > len(body):
        raise _fail("CONNECT variable header is truncated")
    level = body[pos]
    cflags = body[pos + 1]
    keepalive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    if level != 4:
        # §3.1.2.2: answer CONNACK 1 (unacceptable protocol level), then disconnect.
        raise MqttProtocolError(f"unsupported MQTT protocol level {level}", connack_code=1)
    if cflags & 0x01:
        raise _fail("reserved CONNECT flag set")
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise _fail("will QoS or retain set without a will")
    if will_qos == 3:
        raise _fail("will QoS 3")
    has_user = bool(cflags & 0x80)
    has_password = bool(cflags & 0x40)
    if has_password and not has_user:
        raise _fail("password flag without username flag")
    client_id, pos = _read_str(body, pos)
    will = None
    if will_flag:
        will_topic, pos = _read_str(body, pos)
        if not is_valid_topic_name(will_topic):
            raise _fail("invalid will topic")
        will_payload, pos = _read_bin(body, pos)
        will = Will(will_topic, bytes(will_payload), will_qos, will_retain)
    username = None
    password = None
    if has_user:
        username, pos = _read_str(body, pos)
    if has_password:
        raw, pos = _read_bin(body, pos)
        password = bytes(raw)
    if pos != len(body):
        raise _fail("trailing bytes after CONNECT payload")
    return Connect(client_id, keepalive, bool(cflags & 0x02), username, password, will, name, level)


def _parse_connack(flags: int, body: memoryview) -> ConnAck:
    _no_flags(flags, "CONNACK")
    if len(body) != 2:
        raise _fail("CONNACK must be 2 bytes long")
    ack_flags, code = body[0], body[1]
    if ack_flags & 0xFE:
        raise _fail("reserved CONNACK acknowledge flags set")
    if ack_flags and code:
        raise _fail("session present set on a refused CONNACK")
    return ConnAck(code, bool(ack_flags))


def _parse_publish(flags: int, body: memoryview) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise _fail("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise _fail("DUP set on a QoS 0 PUBLISH")
    topic, pos = _read_str(body, 0)
    if not is_valid_topic_name(topic):
        raise _fail("PUBLISH topic is empty or has wildcards")
    packet_id = None
    if qos:
        packet_id = _packet_id(body, pos)
        pos += 2
    return Publish(topic, bytes(body[pos:]), qos, bool(flags & 0x01), dup, packet_id)


def _parse_ack(flags: int, body: memoryview, name: str) -> int:
    _no_flags(flags, name)
    if len(body) != 2:
        raise _fail(f"{name} must be 2 bytes long")
    return _packet_id(body, 0)


def _parse_subscribe(flags: int, body: memoryview) -> Subscribe:
    if flags != 0x02:
        raise _fail("SUBSCRIBE fixed-header flags must be 0010")
    packet_id = _packet_id(body, 0)
    pos = 2
    subs: list[tuple[str, int]] = []
    end = len(body)
    while pos < end:
        topic_filter, pos = _read_str(body, pos)
        if pos >= end:
            raise _fail("SUBSCRIBE filter without a requested QoS")
        qos = body[pos]
        pos += 1
        if qos > 2:
            raise _fail("SUBSCRIBE requested QoS byte is not 0, 1 or 2")
        if not is_valid_topic_filter(topic_filter):
            raise _fail("invalid topic filter in SUBSCRIBE")
        subs.append((topic_filter, qos))
    if not subs:
        raise _fail("SUBSCRIBE without any topic filter")
    return Subscribe(packet_id, tuple(subs))


def _parse_suback(flags: int, body: memoryview) -> SubAck:
    _no_flags(flags, "SUBACK")
    packet_id = _packet_id(body, 0)
    codes = tuple(body[2:])
    if not codes:
        raise _fail("SUBACK without return codes")
    if not _VALID_SUBACK_CODES.issuperset(codes):
        raise _fail("SUBACK return code is not 0, 1, 2 or 0x80")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(flags: int, body: memoryview) -> Unsubscribe:
    if flags != 0x02:
        raise _fail("UNSUBSCRIBE fixed-header flags must be 0010")
    packet_id = _packet_id(body, 0)
    pos = 2
    topics: list[str] = []
    while pos < len(body):
        topic_filter, pos = _read_str(body, pos)
        if not is_valid_topic_filter(topic_filter):
            raise _fail("invalid topic filter in UNSUBSCRIBE")
        topics.append(topic_filter)
    if not topics:
        raise _fail("UNSUBSCRIBE without any topic filter")
    return Unsubscribe(packet_id, tuple(topics))


_PING_REQ = PingReq()
_PING_RESP = PingResp()
_DISCONNECT_PACKET = Disconnect()


def _parse_empty(flags: int, body: memoryview, name: str, packet: Packet) -> Packet:
    _no_flags(flags, name)
    if len(body):
        raise _fail(f"{name} must have no body")
    return packet


def _unsupported(name: str) -> Callable[[int, memoryview], Packet]:
    def parse(flags: int, body: memoryview) -> Packet:
        raise _fail(f"{name} is not supported (QoS 2 is not offered)")

    return parse


def _reserved(flags: int, body: memoryview) -> Packet:
    raise _fail("reserved packet type")


_PARSERS: tuple[Callable[[int, memoryview], Packet], ...] = (
    _reserved,  # 0
    _parse_connect,
    _parse_connack,
    _parse_publish,
    lambda f, b: PubAck(_parse_ack(f, b, "PUBACK")),
    _unsupported("PUBREC"),
    _unsupported("PUBREL"),
    _unsupported("PUBCOMP"),
    _parse_subscribe,
    _parse_suback,
    _parse_unsubscribe,
    lambda f, b: UnsubAck(_parse_ack(f, b, "UNSUBACK")),
    lambda f, b: _parse_empty(f, b, "PINGREQ", _PING_REQ),
    lambda f, b: _parse_empty(f, b, "PINGRESP", _PING_RESP),
    lambda f, b: _parse_empty(f, b, "DISCONNECT", _DISCONNECT_PACKET),
    _reserved,  # 15
)


def _parse_one(view: memoryview, pos: int, end: int, max_size: int) -> tuple[Packet | None, int]:
    """Parse the packet starting at `pos`; (None, pos) when it is not complete yet.

    The size limit is enforced as soon as the remaining length is known, before any of the
    body is buffered, so a peer cannot make us hold more than `max_size` bytes.
    """
    if end - pos < 2:
        return None, pos
    first = view[pos]
    b = view[pos + 1]
    if b < 0x80:
        length = b
        header = 2
    else:
        length = b & 0x7F
        shift = 7
        i = pos + 2
        while True:
            if i - pos > 4:
                raise _fail("remaining length is longer than 4 bytes")
            if i >= end:
                return None, pos
            b = view[i]
            length |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                break
            shift += 7
        header = i - pos
    total = header + length
    if total > max_size:
        raise MqttProtocolError(f"packet of {total} bytes exceeds the {max_size}-byte limit")
    if end - pos < total:
        return None, pos
    body = view[pos + header : pos + total]
    failure: tuple[str, int | None] | None = None
    try:
        packet = _PARSERS[first >> 4](first & 0x0F, body)
    except MqttProtocolError as exc:
        failure = (exc.message, exc.connack_code)
    except (IndexError, ValueError):
        failure = ("malformed MQTT packet", None)
    finally:
        body.release()
    if failure is not None:
        # Raised afresh outside the handler so that no traceback keeps the parser's frames, and
        # with them views into the caller's buffer, alive (a live view locks a bytearray).
        raise MqttProtocolError(failure[0], connack_code=failure[1])
    return packet, pos + total


class Decoder:
    """Incremental decoder: feed it chunks of any size, get back whole packets.

    `max_packet_size` bounds a whole packet (fixed header included); a larger one fails as soon
    as its remaining length has been read.
    """

    __slots__ = ("_buf", "_error", "_pos", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2")
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._pos = 0
        self._error: MqttProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not form a whole packet yet (or are held back by `next_packet`)."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add `data` and return every packet now complete, in order.

        On a malformed packet the packets decoded before it in this call are lost with the
        exception; a caller that needs them uses `append` + `next_packet`.
        """
        if self._error is not None:
            raise self._error
        if self._pos == len(self._buf):
            # Fast path: nothing pending, so parse the caller's chunk in place.
            out: list[Packet] = []
            with memoryview(data) as view:
                pos, end = 0, len(view)
                try:
                    while True:
                        packet, pos = _parse_one(view, pos, end, self.max_packet_size)
                        if packet is None:
                            break
                        out.append(packet)
                except MqttProtocolError as exc:
                    self._error = exc
                    raise
                self._buf = bytearray(view[pos:]) if pos < end else bytearray()
                self._pos = 0
            return out
        self.append(data)
        out = []
        while (packet := self.next_packet()) is not None:
            out.append(packet)
        return out

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer `data` without parsing (pair with `next_packet`)."""
        if self._error is not None:
            raise self._error
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def next_packet(self) -> Packet | None:
        """The next complete packet from the buffer, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        with memoryview(buf) as view:
            try:
                packet, pos = _parse_one(view, self._pos, len(buf), self.max_packet_size)
            except MqttProtocolError as exc:
                self._error = exc
                raise
        if packet is None:
            return None
        if pos == len(buf):
            buf.clear()
            self._pos = 0
        elif pos > 65536 and pos * 2 > len(buf):
            # Compact only when the consumed prefix is large, to keep copies amortised.
            del buf[:pos]
            self._pos = 0
        else:
            self._pos = pos
        return packet


def decode(data: bytes) -> Packet:
    """Decode exactly one whole packet (tests, fixtures); trailing or missing bytes fail."""
    packet, pos = _parse_one(memoryview(data), 0, len(data), MAX_REMAINING_LENGTH + 5)
    if packet is None:
        raise _fail("truncated packet")
    if pos != len(data):
        raise _fail("bytes after the packet")
    return packet
