"""MQTT 3.1.1 codec: round trips for every packet type, chunking, and the malformed cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdps.errors import InvalidInput
from iotdps.protocols.mqtt import (
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    MqttProtocolError,
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
    decode,
    encode,
)

# -- strategies --------------------------------------------------------------------------------

mqtt_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
topic_name = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00+#"), min_size=1, max_size=40)
level = st.sampled_from(["a", "b", "$dps", "registrations", "", "+", "ü"])
topic_filter = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])) or "#",
    st.lists(level, max_size=5),
    st.booleans(),
)
pid = st.integers(1, 0xFFFF)
blob = st.binary(max_size=300)

wills = st.none() | st.builds(Will, topic_name, blob, st.integers(0, 2), st.booleans())


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | mqtt_text)
    password = draw(st.none() | blob) if username is not None else None
    return Connect(
        client_id=draw(mqtt_text),
        keepalive=draw(st.integers(0, 0xFFFF)),
        clean_session=draw(st.booleans()),
        username=username,
        password=password,
        will=draw(wills),
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(topic_name),
        draw(blob),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(pid) if qos else None,
    )


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    st.builds(ConnAck, st.integers(0, 5), st.just(False)),
    st.builds(ConnAck, st.just(0), st.booleans()),
    publishes(),
    st.builds(PubAck, pid),
    st.builds(
        Subscribe,
        pid,
        st.lists(st.tuples(topic_filter, st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(SubAck, pid, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple)),
    st.builds(Unsubscribe, pid, st.lists(topic_filter, min_size=1, max_size=4).map(tuple)),
    st.builds(UnsubAck, pid),
    st.just(PingReq()),
    st.just(PingResp()),
    st.just(Disconnect()),
)


# -- round trips -------------------------------------------------------------------------------


@settings(max_examples=400)
@given(packets)
def test_every_packet_type_round_trips(packet: Packet) -> None:
    data = encode(packet)
    assert decode(data) == packet
    assert Decoder().feed(data) == [packet]


@settings(max_examples=150)
@given(st.lists(packets, min_size=1, max_size=8), st.data())
def test_any_chunking_of_a_stream_yields_the_same_packets(items: list[Packet], data: st.DataObject) -> None:
    stream = b"".join(encode(p) for p in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = Decoder()
    out: list[Packet] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[prev:cut]))
        prev = cut
    assert out == items
    assert decoder.buffered == 0


def test_byte_by_byte_and_next_packet_api() -> None:
    items = [PingReq(), Publish("a/b", b"x" * 200, 1, packet_id=7), Disconnect()]
    stream = b"".join(encode(p) for p in items)
    decoder = Decoder()
    got: list[Packet] = []
    for i in range(len(stream)):
        decoder.append(stream[i : i + 1])
        while (p := decoder.next_packet()) is not None:
            got.append(p)
    assert got == items


# -- exact bytes (MQTT 3.1.1 examples and what paho sends) -------------------------------------


def test_known_encodings() -> None:
    assert encode(PingReq()) == b"\xc0\x00"
    assert encode(PingResp()) == b"\xd0\x00"
    assert encode(Disconnect()) == b"\xe0\x00"
    assert encode(ConnAck(0, True)) == b"\x20\x02\x01\x00"
    assert encode(PubAck(0x1234)) == b"\x40\x02\x12\x34"
    assert encode(Publish("a/b", b"hi", 1, packet_id=10)) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert (
        encode(Subscribe(1, (("$dps/registrations/res/#", 1),)))
        == b"\x82\x1d\x00\x01\x00\x18$dps/registrations/res/#\x01"
    )
    # The 2.14.0 DPS CONNECT shape: clean session 0, username + password flags (0xC0), keep-alive 60.
    connect = encode(Connect("dev-1", 60, False, "u", b"p"))
    assert connect == b"\x10\x17\x00\x04MQTT\x04\xc0\x00\x3c\x00\x05dev-1\x00\x01u\x00\x01p"
    # X.509: username flag only, no password field at all.
    assert encode(Connect("dev-1", 60, False, "u"))[9] == 0x80


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(3, b"\x03"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01")],
)
def test_remaining_length_boundaries(length: int, encoded: bytes) -> None:
    data = encode(Publish("t", b"x" * (length - 3), 0))
    assert data[1 : 1 + len(encoded)] == encoded
    assert len(data) == 1 + len(encoded) + length
    assert decode(data) == Publish("t", b"x" * (length - 3))


def test_large_remaining_length_four_bytes() -> None:
    big = Publish("t", b"\x00" * 2_100_000)
    data = encode(big)
    # 2_100_003 needs the fourth length byte (three carry at most 2_097_151).
    assert [b & 0x80 for b in data[1:5]] == [0x80, 0x80, 0x80, 0]
    assert Decoder(max_packet_size=3_000_000).feed(data) == [big]


# -- malformed input ---------------------------------------------------------------------------

MALFORMED = {
    "remaining length over 4 bytes": b"\x30\xff\xff\xff\xff\x01",
    "reserved type 0": b"\x00\x00",
    "reserved type 15": b"\xf0\x00",
    "PUBREC unsupported": b"\x50\x02\x00\x01",
    "PUBREL unsupported": b"\x62\x02\x00\x01",
    "PINGREQ with flags": b"\xc1\x00",
    "PINGREQ with body": b"\xc0\x01\x00",
    "DISCONNECT with flags": b"\xe2\x00",
    "PUBACK wrong length": b"\x40\x03\x00\x01\x00",
    "PUBACK packet id 0": b"\x40\x02\x00\x00",
    "PUBACK reserved flags": b"\x41\x02\x00\x01",
    "PUBLISH qos 3": b"\x36\x05\x00\x01a\x00\x01",
    "PUBLISH dup on qos 0": b"\x38\x03\x00\x01a",
    "PUBLISH zero packet id": b"\x32\x05\x00\x01a\x00\x00",
    "PUBLISH wildcard topic": b"\x30\x03\x00\x01#",
    "PUBLISH empty topic": b"\x30\x02\x00\x00",
    "PUBLISH topic past end": b"\x30\x03\x00\x05a",
    "PUBLISH bad utf-8": b"\x30\x04\x00\x02\xc3\x28",
    "PUBLISH NUL in topic": b"\x30\x04\x00\x02a\x00",
    "PUBLISH surrogate in topic": b"\x30\x05\x00\x03\xed\xa0\x80",
    "SUBSCRIBE wrong flags": b"\x80\x06\x00\x01\x00\x01a\x01",
    "SUBSCRIBE empty": b"\x82\x02\x00\x01",
    "SUBSCRIBE zero packet id": b"\x82\x06\x00\x00\x00\x01a\x01",
    "SUBSCRIBE qos 3": b"\x82\x06\x00\x01\x00\x01a\x03",
    "SUBSCRIBE reserved qos bits": b"\x82\x06\x00\x01\x00\x01a\x41",
    "SUBSCRIBE missing qos": b"\x82\x05\x00\x01\x00\x01a",
    "SUBSCRIBE bad filter": b"\x82\x07\x00\x01\x00\x02a#\x01",
    "UNSUBSCRIBE empty": b"\xa2\x02\x00\x01",
    "UNSUBSCRIBE wrong flags": b"\xa0\x05\x00\x01\x00\x01a",
    "SUBACK bad code": b"\x90\x03\x00\x01\x03",
    "SUBACK no codes": b"\x90\x02\x00\x01",
    "CONNACK reserved flags": b"\x20\x02\x02\x00",
    "CONNACK session present on refusal": b"\x20\x02\x01\x05",
    "CONNACK wrong length": b"\x20\x03\x00\x00\x00",
    "CONNECT wrong protocol name": b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00",
    "CONNECT reserved flag": b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00",
    "CONNECT password without username": b"\x10\x0f\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x01p",
    "CONNECT will qos without will": b"\x10\x0c\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00",
    "CONNECT will qos 3": b"\x10\x12\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00\x00\x01t\x00\x01p",
    "CONNECT trailing bytes": b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\x00",
    "CONNECT truncated header": b"\x10\x08\x00\x04MQTT\x04\x02",
    "CONNECT flags on fixed header": b"\x11\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_packets_raise_one_error_type(data: bytes) -> None:
    with pytest.raises(MqttProtocolError) as info:
        Decoder().feed(data)
    assert isinstance(info.value, InvalidInput)
    assert info.value.message


def test_unsupported_protocol_level_asks_for_connack_1() -> None:
    with pytest.raises(MqttProtocolError) as info:
        decode(b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x00\x00")
    assert info.value.connack_code == 1


def test_decoder_stays_failed_after_an_error() -> None:
    decoder = Decoder()
    with pytest.raises(MqttProtocolError):
        decoder.feed(b"\xf0\x00")
    assert decoder.failed
    with pytest.raises(MqttProtocolError):
        decoder.feed(encode(PingReq()))


def test_max_packet_size_is_refused_from_the_header_alone() -> None:
    decoder = Decoder(max_packet_size=1000)
    # Only the fixed header of a 10 MB PUBLISH: refused before a byte of body arrives.
    header = b"\x30" + bytes([0x80, 0xAD, 0xE2, 0x04])
    with pytest.raises(MqttProtocolError, match="exceeds"):
        decoder.feed(header)
    assert decoder.buffered == 0
    # Exactly at the limit is fine.
    ok = encode(Publish("t", b"x" * (1000 - 2 - 3 - 1)))
    assert len(ok) == 1000
    assert Decoder(max_packet_size=1000).feed(ok)[0] == Publish("t", b"x" * 994)
    with pytest.raises(MqttProtocolError):
        Decoder(max_packet_size=999).feed(ok)


def test_repr_hides_passwords_and_payloads() -> None:
    connect = Connect("dev-1", username="u", password=b"SharedAccessSignature sr=x&sig=SECRET")
    assert "SECRET" not in repr(connect)
    assert "SECRET" not in repr(Publish("t", b"SECRET"))


def test_encode_refuses_what_mqtt_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode(PubAck(0))
    with pytest.raises(ValueError):
        encode(Publish("t", b"", 1))
    with pytest.raises(ValueError):
        encode(Connect("c", password=b"p"))
    with pytest.raises(ValueError):
        encode(Subscribe(1, ()))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_either_decode_or_raise_protocol_error(data: bytes) -> None:
    decoder = Decoder(max_packet_size=512)
    try:
        packets_out = decoder.feed(data)
    except MqttProtocolError:
        return
    # Whatever decoded must re-encode to a prefix of the input (minus non-minimal lengths).
    for p in packets_out:
        assert decode(encode(p)) == p
