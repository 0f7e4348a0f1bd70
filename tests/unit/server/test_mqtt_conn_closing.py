"""A connection whose client has sent DISCONNECT takes no more PUBLISHes, even before the
connection's worker has read the packet and closed it.

The session closes as soon as it parses DISCONNECT (in data_received); the worker closes the
connection a little later. A C2D kick, desired patch or direct method in between used to hit
the closed session and raise MqttStateError into the hub's caller instead of "not connected".
Real sockets: the connection runs on one end of a socket pair, our client session on the other.
"""

from __future__ import annotations

import asyncio
import socket

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived, PublishReceived, Subscribed
from iotdps.server.mqtt_conn import MqttConnection


class _Endpoint:
    holds_replies = False

    async def on_publish(self, conn: MqttConnection, event: PublishReceived) -> None:
        return None

    async def on_subscribe(self, conn: MqttConnection, event: Subscribed) -> list[int]:
        return [1 for _ in event.topics]

    async def on_puback(self, conn: MqttConnection, event: object) -> None:
        return None

    async def on_close(self, conn: MqttConnection, reason: str) -> None:
        return None


async def _router(conn: MqttConnection, connect: object) -> _Endpoint:
    return _Endpoint()


async def test_publish_after_disconnect_is_read_is_dropped_not_raised() -> None:
    loop = asyncio.get_running_loop()
    server_sock, client_sock = socket.socketpair()
    conn = MqttConnection(_router, max_packet_size=65536)  # type: ignore[arg-type]
    await loop.create_connection(lambda: conn, sock=server_sock)
    client = ClientSession()
    reader, writer = await asyncio.open_connection(sock=client_sock)
    try:
        writer.write(client.connect("dev-1"))
        await writer.drain()
        events = client.receive_data(await asyncio.wait_for(reader.read(64), 5))
        assert any(isinstance(e, ConnAckReceived) and e.return_code == 0 for e in events)
        assert conn.publish("devices/dev-1/messages/devicebound/", b"before", qos=1) is not None

        # DISCONNECT parsed, the worker not yet run: the session is closed, the connection
        # still open. A publish now is dropped (None), as on a closed connection.
        conn.data_received(client.disconnect())
        assert conn.session.closed and conn.open
        assert conn.publish("devices/dev-1/messages/devicebound/", b"after", qos=1) is None
        for _ in range(100):
            if not conn.open:
                break
            await asyncio.sleep(0.01)
        assert not conn.open
    finally:
        writer.close()
