"""A DPS MQTT connection made by hand with our sans-IO client session, for what the Azure SDK
will not do (send an expired token, hold a connection open, stop mid-registration, send a CSR).

Two shapes on the same pieces (`dps_username`, `server_tls`):
- `dps_connect`: blocking, TLS to 8883, CONNECT only; the caller writes further packets itself.
- `open_raw_dps`: asyncio, whole request/answer exchanges (register, operation status), over
  TCP (8883) or over websockets (443, `/$iothub/websocket`, subprotocol `mqtt`, wire doc 9.4)
  with aiohttp's client. The MQTT side is one code path for both transports, so a test that
  compares them compares the servers' transports, not two hand-written clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.dps import (
    DPS_RESPONSE_FILTER,
    format_register_topic,
    format_status_topic,
    parse_dps_response_topic,
)
from iotdps.protocols.mqtt.events import ConnAckReceived, Event, PublishReceived, SubAckReceived
from iotdps_testing.server import RunningServer

__all__ = [
    "SDK_API_VERSION",
    "DpsAnswer",
    "DpsConnection",
    "RawDps",
    "dps_connect",
    "dps_username",
    "open_raw_dps",
    "server_tls",
]

SDK_API_VERSION = "2019-03-31"  # what azure-iot-device 2.14.0 sends
WEBSOCKET_PATH = "/$iothub/websocket"

DpsConnection = tuple[ssl.SSLSocket, ClientSession, int]


def dps_username(server: RunningServer, registration_id: str, api_version: str = SDK_API_VERSION) -> str:
    """The DPS CONNECT username (wire doc 1.2): no `?` before api-version."""
    return f"{server.id_scope}/registrations/{registration_id}/api-version={quote(api_version)}&ClientVersion=test"


def server_tls(server: RunningServer) -> ssl.SSLContext:
    """A client context trusting only the server's CA, with host name (IP SAN) checks on."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    return context


def dps_connect(
    server: RunningServer, registration_id: str, token: str, *, timeout: float = 10.0, keepalive: int = 60
) -> DpsConnection:
    """TLS to the server's 8883, CONNECT as `registration_id` with the SAS `token`; returns the
    socket (the caller closes it), the session and the CONNACK return code."""
    raw = socket.create_connection((server.address, 8883), timeout=timeout)
    tls = server_tls(server).wrap_socket(raw, server_hostname=server.address)
    session = ClientSession()
    username = dps_username(server, registration_id)
    tls.sendall(session.connect(registration_id, username, token, keepalive=keepalive, clean_session=False))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = tls.recv(4096)
        if not data:
            break
        for event in session.receive_data(data):
            if isinstance(event, ConnAckReceived):
                return tls, session, event.return_code
    tls.close()
    raise AssertionError("no CONNACK")


# -- asyncio, over either transport -----------------------------------------------------------


class _Stream(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes:
        """The next bytes; b"" once the peer has closed."""
        ...

    async def close(self) -> None: ...


class _TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def receive(self) -> bytes:
        return await self._reader.read(65536)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


class _WebSocketStream:
    """MQTT bytes in binary frames; a frame may hold any slice of the stream (ws_bridge)."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http, self._ws = http, ws

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def receive(self) -> bytes:
        message = await self._ws.receive()
        if message.type == aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return b""
        raise AssertionError(f"unexpected websocket message {message.type.name}: {str(message.data)[:200]}")

    async def close(self) -> None:
        sock = self._ws.get_extra_info("socket")
        try:
            await self._ws.close()
        finally:
            await self._http.close()
        # aiohttp returns before the TLS transport has finished closing (its close_notify
        # exchange, ~10 ms here); wait for it, so that the socket is not left to the garbage
        # collector once the event loop is gone. Bounded by open_raw_dps's timeout.
        while sock is not None and sock.fileno() != -1:
            await asyncio.sleep(0.01)


@dataclass(frozen=True)
class DpsAnswer:
    """One DPS response: the status from its topic, `retry-after`, and the JSON body."""

    status: int
    retry_after: int | None
    body: Any


class RawDps:
    """Request/answer over one DPS MQTT connection; every wait is bounded by `timeout`."""

    def __init__(self, stream: _Stream, registration_id: str, timeout: float) -> None:
        self._stream = stream
        self.registration_id = registration_id
        self.timeout = timeout
        self.session = ClientSession()
        self._events: deque[Event] = deque()

    async def _next_event(self) -> Event:
        while not self._events:
            data = await self._stream.receive()
            if not data:
                raise AssertionError(f"the server closed the connection ({self.session.state.value})")
            self._events.extend(self.session.receive_data(data))
        return self._events.popleft()

    async def connect(self, token: str, server: RunningServer, api_version: str = SDK_API_VERSION) -> int:
        """CONNECT (and, when accepted, SUBSCRIBE to the responses); the CONNACK code."""
        username = dps_username(server, self.registration_id, api_version)
        async with asyncio.timeout(self.timeout):
            await self._stream.send(self.session.connect(self.registration_id, username, token, clean_session=False))
            while not isinstance(event := await self._next_event(), ConnAckReceived):
                pass
            if event.return_code:
                return event.return_code
            packet_id, subscribe = self.session.subscribe([(DPS_RESPONSE_FILTER, 1)])
            await self._stream.send(subscribe)
            while not (isinstance(event := await self._next_event(), SubAckReceived) and event.packet_id == packet_id):
                pass
            assert event.return_codes == (1,), event
        return 0

    async def _request(self, topic_for: Any, payload: bytes) -> DpsAnswer:
        rid = str(uuid.uuid4())
        async with asyncio.timeout(self.timeout):
            await self._stream.send(self.session.publish(topic_for(rid), payload, qos=1)[1])
            while True:
                event = await self._next_event()
                if not isinstance(event, PublishReceived):
                    continue  # our PUBACK, a PINGRESP
                response = parse_dps_response_topic(event.topic)
                if response.rid == rid:
                    return DpsAnswer(response.status, response.retry_after, json.loads(event.payload))

    async def register(self, body: dict[str, Any]) -> DpsAnswer:
        request = {"registrationId": self.registration_id, "payload": None, **body}
        return await self._request(format_register_topic, json.dumps(request).encode())

    async def operation_status(self, operation_id: str) -> DpsAnswer:
        # The poll body is a single space, as the SDKs send it (wire doc 1.5).
        return await self._request(lambda rid: format_status_topic(rid, operation_id), b" ")

    async def poll(self, operation_id: str, *, attempts: int = 15) -> DpsAnswer:
        """Operation status until it is no longer `assigning` (at most `attempts` polls)."""
        for _ in range(attempts):
            answer = await self.operation_status(operation_id)
            if answer.status != 202:
                return answer
            await asyncio.sleep(min(answer.retry_after or 1, 3))
        raise AssertionError(f"operation {operation_id} still assigning after {attempts} polls")


@contextlib.asynccontextmanager
async def open_raw_dps(
    server: RunningServer, registration_id: str, *, websocket: bool = False, timeout: float = 15.0
) -> AsyncIterator[RawDps]:
    """A TLS connection to the server's DPS MQTT endpoint: TCP 8883, or `wss://addr:443/$iothub/websocket`.
    The TLS context trusts only the server CA and checks its IP SAN."""
    context = server_tls(server)
    stream: _Stream
    async with asyncio.timeout(timeout):
        if websocket:
            http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            try:
                ws = await http.ws_connect(
                    f"wss://{server.address}:443{WEBSOCKET_PATH}", protocols=("mqtt",), ssl=context, autoping=True
                )
            except BaseException:
                await http.close()
                raise
            assert ws.protocol == "mqtt", ws.protocol
            stream = _WebSocketStream(http, ws)
        else:
            reader, writer = await asyncio.open_connection(
                server.address, 8883, ssl=context, server_hostname=server.address
            )
            stream = _TcpStream(reader, writer)
    try:
        yield RawDps(stream, registration_id, timeout)
    finally:
        async with asyncio.timeout(timeout):
            await stream.close()
