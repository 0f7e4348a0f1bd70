"""An asyncio MQTT 3.1.1 client over TLS, on the sans-IO ClientSession (protocols.mqtt).

Small on purpose (the fleet simulator runs thousands of these in one process): one Protocol
object per connection, futures for the packets we wait for (CONNACK, PUBACK, SUBACK), a
callback for every PUBLISH the server sends, and a keep-alive pinger. QoS 1 messages from the
server are PUBACKed right after the callback has taken them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator, Sequence

from iotdps.errors import IotdpsError
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE
from iotdps.protocols.mqtt.events import (
    ConnAckReceived,
    Disconnected,
    ProtocolViolation,
    PubAckReceived,
    PublishReceived,
    SubAckReceived,
)

__all__ = ["ConnectRefused", "MqttClient", "open_mqtt"]


class ConnectRefused(IotdpsError):
    """The server answered CONNACK with a non-zero code (4/5: bad credentials or not allowed)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server refused the connection (CONNACK {code})")
        self.code = code


class MqttClient(asyncio.Protocol):
    def __init__(
        self,
        on_publish: Callable[[PublishReceived], None] | None = None,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> None:
        self.session = ClientSession(max_packet_size=max_packet_size)
        self.on_publish = on_publish
        loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] = loop.create_future()
        self._waiters: dict[int, asyncio.Future[object]] = {}
        self.lost: asyncio.Future[str] = loop.create_future()
        self._pinger: asyncio.Task[None] | None = None
        self._keepalive = 0
        self._corked: list[bytes] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        for event in self.session.receive_data(data):
            if isinstance(event, ConnAckReceived):
                if not self._connack.done():
                    self._connack.set_result(event.return_code)
            elif isinstance(event, PubAckReceived):
                self._resolve(event.packet_id, None)
            elif isinstance(event, SubAckReceived):
                self._resolve(event.packet_id, event.return_codes)
            elif isinstance(event, PublishReceived):
                if self.on_publish is not None:
                    self.on_publish(event)
                if event.qos == 1 and event.packet_id is not None and not self.session.closed:
                    self._write(self.session.puback(event.packet_id))
            elif isinstance(event, ProtocolViolation | Disconnected):
                self.close(event.reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.close("connection lost")

    # -- API ------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.session.closed

    def _write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Packets written inside the block leave in one write: one TLS record, one send."""
        self._corked = []
        try:
            yield
        finally:
            data, self._corked = b"".join(self._corked), None
            if data:
                self._write(data)

    def _resolve(self, packet_id: int, value: object) -> None:
        waiter = self._waiters.pop(packet_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def send_connect(
        self,
        client_id: str,
        username: str | None,
        password: str | None,
        *,
        keepalive: int = 60,
        clean_session: bool = False,
    ) -> None:
        """Write CONNECT without waiting for CONNACK; `connected()` waits. MQTT 3.1.1 (3.1.4)
        lets a client send further packets right behind CONNECT, which saves a round trip per
        request it pipelines; a refused CONNECT makes the server drop them."""
        self._keepalive = keepalive
        self._write(self.session.connect(client_id, username, password, keepalive, clean_session))

    async def connected(self, timeout: float | None = 10.0) -> None:
        """Wait for the CONNACK of `send_connect`; ConnectRefused if the server said no.

        `timeout=None` is for a caller that already runs under its own `asyncio.timeout`:
        it saves the timer and the shielding future per connection, which the fleet
        simulator pays once per device."""
        try:
            if timeout is None:
                code = await self._connack
            else:
                code = await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except (TimeoutError, asyncio.CancelledError):
            self.close("no CONNACK")
            raise
        if code != 0:
            self.close(f"refused with CONNACK {code}")
            raise ConnectRefused(code)
        if self._keepalive:
            self._pinger = asyncio.get_running_loop().create_task(self._ping(self._keepalive))

    async def _ping(self, keepalive: int) -> None:
        while self.is_open:
            await asyncio.sleep(keepalive * 0.75)
            if self.is_open:
                self._write(self.session.ping())

    async def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = 30.0) -> None:
        """Publish; at QoS 1 wait for the PUBACK (the hub sends it once the message is stored)."""
        waiter = self.publish_nowait(topic, payload, qos)
        if waiter is not None:
            await asyncio.wait_for(waiter, timeout)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future[object] | None:
        """Write a PUBLISH now; at QoS 1 the future resolves on its PUBACK."""
        if not self.is_open:
            raise ConnectionError("not connected")
        packet_id, data = self.session.publish(topic, payload, qos)
        waiter = self._waiter(packet_id)
        self._write(data)
        return waiter

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int = 1, timeout: float = 30.0) -> None:
        """Publish several messages in one write; at QoS 1 wait until every one is acknowledged.

        MQTT lets a client keep many QoS 1 messages in flight; writing them together costs one
        TLS record instead of one per message (the simulator's telemetry load uses this)."""
        if not self.is_open:
            raise ConnectionError("not connected")
        waiters: list[asyncio.Future[object]] = []
        chunks: list[bytes] = []
        for topic, payload in messages:
            packet_id, data = self.session.publish(topic, payload, qos)
            waiter = self._waiter(packet_id)
            if waiter is not None:
                waiters.append(waiter)
            chunks.append(data)
        self._write(b"".join(chunks))
        if waiters:
            await asyncio.wait_for(asyncio.gather(*waiters), timeout)

    async def subscribe(self, filters: Sequence[str], timeout: float = 30.0) -> tuple[int, ...]:
        codes = await asyncio.wait_for(self.subscribe_nowait(filters), timeout)
        assert isinstance(codes, tuple)
        return codes

    def subscribe_nowait(self, filters: Sequence[str]) -> asyncio.Future[object]:
        """Write a SUBSCRIBE (QoS 1 for each filter) now; the future resolves to the SUBACK codes."""
        if not self.is_open:
            raise ConnectionError("not connected")
        packet_id, data = self.session.subscribe([(f, 1) for f in filters])
        waiter = self._waiter(packet_id)
        self._write(data)
        assert waiter is not None
        return waiter

    def _waiter(self, packet_id: int | None) -> asyncio.Future[object] | None:
        if packet_id is None:
            return None
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters[packet_id] = future
        return future

    async def disconnect(self) -> None:
        """Send DISCONNECT and close, as the Azure SDK (paho) does: the socket is closed right
        after DISCONNECT, without TLS's close_notify exchange, which MQTT does not need once it
        has said goodbye (and which cost our load generator a wake-up, a read and a timer per
        connection). If our TLS layer still holds unsent bytes, close waits for them instead."""
        if self.is_open:
            self._write(self.session.disconnect())
        transport = self._transport
        if transport is not None and not transport.is_closing() and not transport.get_write_buffer_size():
            transport.abort()
        self.close("client disconnected")  # resolves `lost`: there is nothing left to wait for

    def close(self, reason: str = "closed") -> None:
        self.session.close(reason)
        if self._pinger is not None:
            self._pinger.cancel()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(reason))
                waiter.exception()  # retrieved: a pipelined request's waiter may have no reader yet
        self._waiters.clear()
        if not self._connack.done():
            self._connack.set_exception(ConnectionError(reason))
            self._connack.exception()  # retrieved: nobody may be waiting
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if not self.lost.done():
            self.lost.set_result(reason)


async def open_mqtt(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    on_publish: Callable[[PublishReceived], None] | None = None,
    timeout: float | None = 10.0,
) -> MqttClient:
    """A TLS connection to host:port with an MqttClient on it (CONNECT not sent yet).

    `timeout=None` is for a caller under its own `asyncio.timeout`: `wait_for` would run the
    connection in a task of its own, an extra task and timer per connection."""
    loop = asyncio.get_running_loop()
    connecting = loop.create_connection(lambda: MqttClient(on_publish), host, port, ssl=context, server_hostname=host)
    if timeout is None:
        _, protocol = await connecting
    else:
        _, protocol = await asyncio.wait_for(connecting, timeout)
    return protocol
