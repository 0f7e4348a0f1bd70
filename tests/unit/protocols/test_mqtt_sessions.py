"""Server and client sessions: the state rules, fuzzing, and a client paired with a server by
shuttling bytes (no sockets)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdps.protocols.mqtt import (
    ClientSession,
    ClientState,
    ConnAck,
    ConnAckReceived,
    Connect,
    Connected,
    Disconnect,
    Disconnected,
    Event,
    MqttStateError,
    PingHandled,
    PingReq,
    PingRespReceived,
    ProtocolViolation,
    PubAck,
    PubAckReceived,
    Publish,
    PublishReceived,
    ServerSession,
    ServerState,
    SubAck,
    SubAckReceived,
    Subscribe,
    Subscribed,
    UnsubAckReceived,
    Unsubscribe,
    Unsubscribed,
    encode,
)

CONNECT = encode(Connect("dev-1", 60, False, "scope/registrations/dev-1/api-version=2019-03-31", b"sas"))


def connected_server(now: float = 0.0, **kwargs: object) -> ServerSession:
    server = ServerSession(now, **kwargs)  # type: ignore[arg-type]
    events = server.receive_data(CONNECT, now)
    assert isinstance(events[0], Connected)
    server.accept()
    return server


# -- server rules ------------------------------------------------------------------------------


def test_first_packet_must_be_connect() -> None:
    server = ServerSession(0.0)
    events = server.receive_data(encode(PingReq()), 0.0)
    assert events == [ProtocolViolation("first packet must be CONNECT, got PINGREQ")]
    assert server.closed
    assert server.receive_data(CONNECT, 1.0) == []


def test_second_connect_is_a_violation() -> None:
    server = connected_server()
    events = server.receive_data(CONNECT, 1.0)
    assert isinstance(events[-1], ProtocolViolation)
    assert "second CONNECT" in events[-1].reason
    assert server.state is ServerState.CLOSED


@pytest.mark.parametrize("packet", [ConnAck(0), SubAck(1, (1,)), Publish("a", b"", 2, packet_id=1)])
def test_packets_a_client_may_not_send(packet: object) -> None:
    server = connected_server()
    events = server.receive_data(encode(packet), 1.0)  # type: ignore[arg-type]
    assert len(events) == 1 and isinstance(events[0], ProtocolViolation)
    assert server.closed


def test_qos2_publish_is_refused_like_azure() -> None:
    server = connected_server()
    [event] = server.receive_data(encode(Publish("devices/d/messages/events/", b"x", 2, packet_id=3)), 1)
    assert event == ProtocolViolation("QoS 2 is not supported")


def test_packets_pipelined_behind_connect_wait_for_accept() -> None:
    server = ServerSession(0.0)
    sub = encode(Subscribe(1, (("$dps/registrations/res/#", 1),)))
    events = server.receive_data(CONNECT + sub, 0.0)
    assert [type(e) for e in events] == [Connected]
    assert server.state is ServerState.CONNECTING
    assert server.accept() == b"\x20\x02\x00\x00"
    assert server.receive_data(b"", 0.5) == [Subscribed((("$dps/registrations/res/#", 1),), 1)]


def test_refuse_sends_connack_and_drops_pipelined_packets() -> None:
    server = ServerSession(0.0)
    server.receive_data(CONNECT + encode(PingReq()), 0.0)
    assert server.refuse(5) == b"\x20\x02\x00\x05"
    assert server.closed and server.close_reason == "refused with CONNACK 5"
    assert server.receive_data(b"", 1.0) == []
    assert server.data_to_send() == b""


def test_flood_before_connack_is_a_violation() -> None:
    server = ServerSession(0.0, max_packet_size=100)
    server.receive_data(CONNECT, 0.0)
    events = server.receive_data(encode(PingReq()) * 101, 0.1)
    assert isinstance(events[-1], ProtocolViolation)


def test_bad_protocol_level_answers_connack_1() -> None:
    server = ServerSession(0.0)
    [event] = server.receive_data(b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00", 0.0)
    assert isinstance(event, ProtocolViolation)
    assert server.data_to_send() == b"\x20\x02\x00\x01"


def test_empty_client_id_needs_clean_session() -> None:
    server = ServerSession(0.0)
    [event] = server.receive_data(encode(Connect("", clean_session=False)), 0.0)
    assert isinstance(event, ProtocolViolation)
    assert server.data_to_send() == b"\x20\x02\x00\x02"


def test_ping_is_answered_automatically() -> None:
    server = connected_server()
    assert server.receive_data(encode(PingReq()) * 2, 1.0) == [PingHandled(), PingHandled()]
    assert server.data_to_send() == b"\xd0\x00\xd0\x00"
    assert server.data_to_send() == b""


def test_disconnect_closes_and_later_bytes_are_ignored() -> None:
    server = connected_server()
    events = server.receive_data(encode(Disconnect()) + encode(PingReq()), 1.0)
    assert events == [Disconnected("client sent DISCONNECT")]
    assert server.receive_data(encode(PingReq()), 2.0) == []
    with pytest.raises(MqttStateError):
        server.publish("t", b"x")


def test_events_before_a_malformed_packet_are_kept() -> None:
    server = connected_server()
    events = server.receive_data(encode(PingReq()) + b"\xf0\x00" + encode(PingReq()), 1.0)
    assert [type(e) for e in events] == [PingHandled, ProtocolViolation]


def test_keepalive_deadline_is_one_and_a_half_periods_after_the_last_packet() -> None:
    server = ServerSession(100.0, connect_timeout=10.0)
    assert server.keepalive_deadline(100.0) == 110.0
    server.receive_data(encode(Connect("d", keepalive=20)), 101.0)
    server.accept()
    assert server.keepalive_deadline(101.0) == 131.0
    server.receive_data(encode(PingReq()), 120.0)
    assert server.keepalive_deadline(120.0) == 150.0
    # Half a packet does not count as "a packet received".
    server.receive_data(encode(PingReq())[:1], 140.0)
    assert not server.check_timeouts(149.9)
    assert server.check_timeouts(150.0)
    assert server.close_reason == "keep-alive expired"
    assert server.keepalive_deadline(151.0) is None


def test_keepalive_zero_never_expires_and_connect_timeout_applies() -> None:
    server = connected_server(0.0)
    zero = ServerSession(0.0)
    zero.receive_data(encode(Connect("d", keepalive=0)), 0.0)
    assert zero.keepalive_deadline(0.0) is None
    assert not zero.check_timeouts(1e9)
    assert not server.check_timeouts(89.0)
    silent = ServerSession(0.0, connect_timeout=5.0)
    assert not silent.check_timeouts(4.9)
    assert silent.check_timeouts(5.0) and silent.close_reason == "no CONNECT in time"


def test_inflight_tracks_qos1_until_puback_and_resends_with_dup() -> None:
    server = connected_server()
    server.publish("devices/d/messages/devicebound/", b"one", 1)
    server.publish("devices/d/messages/devicebound/", b"two", 1)
    server.publish("devices/d/messages/devicebound/", b"qos0", 0)
    assert list(server.inflight) == [1, 2]
    [ack] = server.receive_data(encode(PubAck(1)), 1.0)
    assert isinstance(ack, PubAckReceived) and ack.message is not None and ack.message.payload == b"one"
    assert list(server.inflight) == [2]
    # A new connection of the same persistent session resends what is left, DUP set.
    resumed = ServerSession(2.0, inflight=server.inflight.values())
    resumed.receive_data(CONNECT, 2.0)
    resumed.accept(session_present=True)
    client = ClientSession()
    client.connect("dev-1")
    client.receive_data(b"\x20\x02\x01\x00")
    [event] = client.receive_data(resumed.resend_inflight())
    assert event == PublishReceived("devices/d/messages/devicebound/", b"two", 1, 2, False, True)
    # New ids skip the one still in flight.
    resumed.publish("x", b"", 1)
    assert set(resumed.inflight) == {1, 2}


def test_unknown_puback_is_reported_without_a_message() -> None:
    server = connected_server()
    assert server.receive_data(encode(PubAck(9)), 1.0) == [PubAckReceived(9, None)]


def test_app_misuse_raises_state_errors() -> None:
    server = ServerSession(0.0)
    with pytest.raises(MqttStateError):
        server.accept()
    with pytest.raises(MqttStateError):
        server.publish("t", b"")
    server.receive_data(CONNECT, 0.0)
    with pytest.raises(ValueError):
        server.accept(return_code=5)
    server.accept()
    with pytest.raises(MqttStateError):
        server.accept()
    with pytest.raises(ValueError):
        server.publish("a/#", b"")
    with pytest.raises(ValueError):
        server.suback(1, [2])


# -- fuzzing: never raise, never hang ----------------------------------------------------------


def valid_client_stream() -> bytes:
    return b"".join(
        [
            CONNECT,
            encode(Subscribe(1, (("$dps/registrations/res/#", 1),))),
            encode(Publish("$dps/registrations/PUT/iotdps-register/?$rid=1", b'{"payload": null}', 1, packet_id=2)),
            encode(PubAck(1)),
            encode(PingReq()),
            encode(Unsubscribe(3, ("$dps/registrations/res/#",))),
            encode(Publish("devices/d/messages/events/", b"x" * 300, 0)),
            encode(Disconnect()),
        ]
    )


def drive(server: ServerSession, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    now = 0.0
    for chunk in chunks:
        now += 0.01
        for event in server.receive_data(chunk, now):
            events.append(event)
            if isinstance(event, Connected):
                server.accept()
                events.extend(server.receive_data(b"", now))
    server.data_to_send()
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_random_bytes_never_raise_out_of_the_server(chunks: list[bytes]) -> None:
    server = ServerSession(0.0, max_packet_size=256)
    events = drive(server, chunks)
    violations = [e for e in events if isinstance(e, ProtocolViolation)]
    assert len(violations) <= 1
    if violations:
        assert server.closed and events[-1] is violations[0]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_after_a_valid_connect_never_raise(tail: bytes) -> None:
    server = ServerSession(0.0)
    events = drive(server, [CONNECT, tail])
    assert isinstance(events[0], Connected)


def test_every_truncation_of_a_valid_stream_is_handled() -> None:
    stream = valid_client_stream()
    for cut in range(len(stream) + 1):
        server = ServerSession(0.0)
        events = drive(server, [stream[:cut]])
        assert not any(isinstance(e, ProtocolViolation) for e in events)
        if cut == len(stream):
            assert isinstance(events[-1], Disconnected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_chunking_of_a_valid_stream_gives_the_same_events(data: st.DataObject) -> None:
    stream = valid_client_stream()
    reference = drive(ServerSession(0.0), [stream])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert drive(ServerSession(0.0), chunks) == reference
    assert [type(e).__name__ for e in reference] == [
        "Connected",
        "Subscribed",
        "PublishReceived",
        "PubAckReceived",
        "PingHandled",
        "Unsubscribed",
        "PublishReceived",
        "Disconnected",
    ]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_corrupting_a_valid_stream_never_raises(position: int, garbage: bytes) -> None:
    stream = valid_client_stream()
    position %= len(stream)
    corrupted = stream[:position] + garbage + stream[position + len(garbage) :]
    drive(ServerSession(0.0), [corrupted])  # must simply not raise


# -- client session ----------------------------------------------------------------------------


def test_client_refused_connack_closes() -> None:
    client = ClientSession()
    client.connect("d", "u", "p")
    events = client.receive_data(encode(ConnAck(5)))
    assert events == [ConnAckReceived(5, False), Disconnected("server refused with CONNACK 5")]
    assert client.state is ClientState.CLOSED


def test_client_violations_never_raise() -> None:
    client = ClientSession()
    client.connect("d")
    [event] = client.receive_data(encode(PingReq()))
    assert isinstance(event, ProtocolViolation)
    client = ClientSession()
    with pytest.raises(MqttStateError):
        client.publish("t", b"")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=32), max_size=6))
def test_random_bytes_never_raise_out_of_the_client(chunks: list[bytes]) -> None:
    client = ClientSession(max_packet_size=256)
    client.connect("d")
    for chunk in [b"\x20\x02\x00\x00", *chunks]:
        client.receive_data(chunk)


# -- pairing -----------------------------------------------------------------------------------


class Pair:
    """A client and a server session joined by shuttling bytes; `now` is a fake clock."""

    def __init__(self, max_packet_size: int = 4096) -> None:
        self.now = 0.0
        self.client = ClientSession(max_packet_size=max_packet_size)
        self.server = ServerSession(self.now, max_packet_size=max_packet_size)

    def to_server(self, data: bytes) -> list[Event]:
        events = self.server.receive_data(data, self.now)
        return events

    def to_client(self, data: bytes) -> list[Event]:
        return self.client.receive_data(data + self.server.data_to_send())


def test_paired_sessions_full_conversation() -> None:
    pair = Pair()
    [connected] = pair.to_server(pair.client.connect("dev-1", "user", "pw", keepalive=30, clean_session=False))
    assert isinstance(connected, Connected)
    assert connected.packet.password == b"pw" and not connected.packet.clean_session
    assert pair.to_client(pair.server.accept()) == [ConnAckReceived(0, False)]
    assert pair.client.state is ClientState.CONNECTED

    sub_id, data = pair.client.subscribe([("$iothub/methods/POST/#", 1), ("devices/dev-1/messages/devicebound/#", 1)])
    [sub] = pair.to_server(data)
    assert isinstance(sub, Subscribed) and sub.packet_id == sub_id
    assert pair.to_client(pair.server.suback(sub.packet_id, [1, 1])) == [SubAckReceived(sub_id, (1, 1))]

    # device -> server, QoS 0 and QoS 1
    _, data = pair.client.publish("devices/dev-1/messages/events/", b"t0")
    pid, data1 = pair.client.publish("devices/dev-1/messages/events/%24.mid=1", b"t1", 1)
    events = pair.to_server(data + data1)
    assert events == [
        PublishReceived("devices/dev-1/messages/events/", b"t0", 0, None),
        PublishReceived("devices/dev-1/messages/events/%24.mid=1", b"t1", 1, pid),
    ]
    assert pid in pair.client.inflight
    [ack] = pair.to_client(pair.server.puback(pid))  # type: ignore[arg-type]
    assert isinstance(ack, PubAckReceived) and ack.message is not None and ack.message.payload == b"t1"
    assert not pair.client.inflight

    # server -> device, QoS 0 and QoS 1
    events = pair.to_client(
        pair.server.publish("$iothub/methods/POST/reboot/?$rid=1", b"{}", 0)
        + pair.server.publish("devices/dev-1/messages/devicebound/", b"c2d", 1)
    )
    assert [e.qos for e in events if isinstance(e, PublishReceived)] == [0, 1]
    c2d = events[1]
    assert isinstance(c2d, PublishReceived) and c2d.packet_id is not None
    assert pair.to_server(pair.client.puback(c2d.packet_id))[0] == PubAckReceived(
        c2d.packet_id, Publish("devices/dev-1/messages/devicebound/", b"c2d", 1, packet_id=c2d.packet_id)
    )
    assert not pair.server.inflight

    # ping
    pair.now = 10.0
    assert pair.to_server(pair.client.ping()) == [PingHandled()]
    assert pair.to_client(b"") == [PingRespReceived()]

    # unsubscribe
    unsub_id, data = pair.client.unsubscribe(["$iothub/methods/POST/#"])
    [unsub] = pair.to_server(data)
    assert unsub == Unsubscribed(("$iothub/methods/POST/#",), unsub_id)
    assert pair.to_client(pair.server.unsuback(unsub_id)) == [UnsubAckReceived(unsub_id)]

    # keep-alive: 1.5 x 30 s after the ping
    assert pair.server.keepalive_deadline(pair.now) == 55.0
    assert not pair.server.check_timeouts(54.0)

    # disconnect
    assert pair.to_server(pair.client.disconnect()) == [Disconnected("client sent DISCONNECT")]
    assert pair.client.closed and pair.server.closed


def test_paired_keepalive_expiry() -> None:
    pair = Pair()
    pair.to_server(pair.client.connect("d", keepalive=2))
    pair.to_client(pair.server.accept())
    for t in (1.0, 3.5, 6.0):  # pinging in time keeps it alive
        pair.now = t
        pair.to_server(pair.client.ping())
        assert not pair.server.check_timeouts(t)
    assert pair.server.check_timeouts(9.0)
    assert pair.server.close_reason == "keep-alive expired"


def test_paired_max_packet_size() -> None:
    pair = Pair(max_packet_size=200)
    pair.to_server(pair.client.connect("d"))
    pair.to_client(pair.server.accept())
    _, small = pair.client.publish("t", b"x" * 150)
    assert isinstance(pair.to_server(small)[0], PublishReceived)
    _, big = pair.client.publish("t", b"x" * 500)
    [event] = pair.to_server(big[:6])  # refused from the header alone
    assert isinstance(event, ProtocolViolation) and "exceeds" in event.reason
    # and the other direction: the client refuses what it was not sized for
    assert isinstance(pair.client.receive_data(encode(Publish("t", b"y" * 500)))[0], ProtocolViolation)
