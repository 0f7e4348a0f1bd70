"""Our device MQTT client against a loopback TCP peer: pipelined packets leave in one write.

The peer is a real asyncio server on 127.0.0.1 that records every chunk it receives and
answers with bytes from our codec; no TLS here (the TLS seam has its own tests).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from iotdps.device.mqtt import ConnectRefused, MqttClient
from iotdps.protocols.mqtt.codec import Decoder, encode
from iotdps.protocols.mqtt.packets import ConnAck, Connect, PubAck, Publish, SubAck, Subscribe


@dataclass
class Peer:
    port: int
    chunks: list[bytes] = field(default_factory=list)
    answer: Callable[[list[object]], bytes] = lambda packets: b""


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.decoder = Decoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.peer.chunks.append(data)
        reply = self.peer.answer(list(self.decoder.feed(data)))
        if reply:
            self.transport.write(reply)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    holder: list[Peer] = []
    server = await asyncio.get_running_loop().create_server(lambda: _PeerProtocol(holder[0]), "127.0.0.1", 0)
    holder.append(Peer(server.sockets[0].getsockname()[1]))
    yield holder[0]
    server.close()
    await server.wait_closed()


async def _client(peer: Peer) -> MqttClient:
    _, client = await asyncio.get_running_loop().create_connection(MqttClient, "127.0.0.1", peer.port)
    return client


def _accept_all(packets: list[object]) -> bytes:
    out = b""
    for p in packets:
        if isinstance(p, Connect):
            out += encode(ConnAck(return_code=0))
        elif isinstance(p, Subscribe):
            out += encode(SubAck(p.packet_id, tuple(1 for _ in p.subscriptions)))
        elif isinstance(p, Publish) and p.packet_id is not None:
            out += encode(PubAck(p.packet_id))
    return out


async def test_batch_sends_connect_subscribe_publish_in_one_write(peer: Peer) -> None:
    peer.answer = _accept_all
    client = await _client(peer)
    with client.batch():
        client.send_connect("dev-1", "scope/registrations/dev-1", None, keepalive=0)
        subscribed = client.subscribe_nowait(["$dps/registrations/res/#"])
        acked = client.publish_nowait("$dps/registrations/PUT/iotdps-register/?$rid=1", b"{}")
        assert peer.chunks == []  # nothing leaves before the block ends
    await client.connected(timeout=5)
    assert await asyncio.wait_for(subscribed, 5) == (1,)
    assert acked is not None
    await asyncio.wait_for(acked, 5)
    # Loopback delivers one small write as one chunk: the three packets arrived together.
    assert len(peer.chunks) == 1
    kinds = [type(p) for p in Decoder().feed(peer.chunks[0])]
    assert kinds == [Connect, Subscribe, Publish]
    await client.disconnect()


async def test_refused_connect_fails_the_pipelined_requests_quietly(peer: Peer) -> None:
    # CONNACK 5, as a server answers bad credentials; it drops what came behind CONNECT.
    peer.answer = lambda packets: (
        encode(ConnAck(return_code=5)) if any(isinstance(p, Connect) for p in packets) else b""
    )
    client = await _client(peer)
    with client.batch():
        client.send_connect("dev-1", "u", "bad", keepalive=0)
        subscribed = client.subscribe_nowait(["$dps/registrations/res/#"])
        acked = client.publish_nowait("$dps/registrations/PUT/iotdps-register/?$rid=1", b"{}")
    with pytest.raises(ConnectRefused) as refused:
        await client.connected(timeout=5)
    assert refused.value.code == 5
    assert not client.is_open
    with pytest.raises(ConnectionError):
        await subscribed
    # A pipelined request nobody awaits must not report "exception was never retrieved".
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
    del acked
    gc.collect()
    assert reported == []


async def test_connected_without_a_timer_of_its_own_keeps_the_callers_deadline(peer: Peer) -> None:
    # provision() runs the whole exchange under one asyncio.timeout; a server that never
    # answers CONNACK must still end it, and leave the connection closed.
    client = await _client(peer)
    client.send_connect("dev-1", None, None)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.connected(timeout=None)
    assert client.lost.done()
    assert not client.is_open
