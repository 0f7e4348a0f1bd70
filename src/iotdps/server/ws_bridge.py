"""MQTT over websockets: `/$iothub/websocket` on 443, for DPS and the hubs alike.

aiohttp performs the upgrade (paho 1.6.1 accepts its 101 answer; see tests) and this module
makes the websocket look like an asyncio Transport, so the very same MqttConnection serves
both TCP and websocket clients. MQTT bytes travel in binary frames; a frame may carry any
slice of the stream, so frames are fed to the session as a byte stream. A frame is at most
the MQTT maximum packet size: the SDKs send one packet, or a part of one, per frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from iotdps.protocols.mqtt.codec import DEFAULT_MAX_PACKET_SIZE
from iotdps.server.tls_transport import PEER_INFO_KEY

__all__ = ["WEBSOCKET_PATH", "WebSocketTransport", "serve_mqtt_websocket"]

WEBSOCKET_PATH = "/$iothub/websocket"


class WebSocketTransport(asyncio.Transport):
    """Writes become binary frames, sent in order by one writer task."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__()
        self._ws = ws
        self._request = request
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while True:
            data = await self._outbox.get()
            if data is None:
                break
            try:
                await self._ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                break
        with contextlib.suppress(Exception):
            await self._ws.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing and data:
            self._outbox.put_nowait(bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._request.transport
        if name == PEER_INFO_KEY or name in ("peername", "sockname", "peercert", "sslcontext"):
            return transport.get_extra_info(name, default) if transport is not None else default
        return default

    async def drain_and_wait(self) -> None:
        await self._writer


async def serve_mqtt_websocket(
    request: web.Request,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    max_frame_size: int = DEFAULT_MAX_PACKET_SIZE,
) -> web.StreamResponse:
    """The aiohttp handler body for WEBSOCKET_PATH: run one MQTT connection over it.

    `max_frame_size` is the MQTT maximum packet size: a frame that carries more than one whole
    packet's worth is refused (close code 1009) as soon as its header says so, before any of
    its payload is buffered; nobody has authenticated yet when the first frames arrive.
    (aiohttp refuses a message of exactly its `max_msg_size`, hence the + 1.)"""
    ws = web.WebSocketResponse(protocols=("mqtt",), autoping=True, max_msg_size=max_frame_size + 1)
    await ws.prepare(request)
    transport = WebSocketTransport(ws, request)
    protocol = protocol_factory()
    protocol.connection_made(transport)
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                protocol.data_received(message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR, WSMsgType.CLOSED):
                break
            # Text frames are not MQTT; ignore them as Azure does not define them.
            if transport.is_closing():
                break
    finally:
        protocol.connection_lost(None)
        transport.close()
        await transport.drain_and_wait()
    return ws
