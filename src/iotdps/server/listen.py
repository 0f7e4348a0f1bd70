"""Start TLS listeners on the seam: any asyncio protocol, or an aiohttp application.

aiohttp runs unchanged on top of `TlsAppTransport`: its low-level server (`AppRunner.server`) is
an ordinary protocol factory. `TlsSite` plugs into aiohttp's runner like its own `TCPSite`, so
`runner.cleanup()` stops it, and handlers reach the peer with
`request.transport.get_extra_info("iotdps_peer")` (see `request_peer`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web

from iotdps.server.tls import PeerIdentity, ServerTls
from iotdps.server.tls_transport import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    PEER_INFO_KEY,
    HandshakeDeadlines,
    TlsServerProtocol,
)

__all__ = ["TlsAppServer", "TlsSite", "request_peer", "serve_aiohttp_app", "start_tls_server"]


async def start_tls_server(
    host: str,
    port: int,
    tls: ServerTls,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    reuse_address: bool = True,
    backlog: int = 1024,
) -> asyncio.Server:
    """Listen on host:port; each accepted connection does TLS, then gets `protocol_factory()`.

    The protocol is created only after the handshake finished; it sees the peer identity under
    `transport.get_extra_info("iotdps_peer")`. `tls` is read per connection, so its
    `update_anchors` / `update_server_certificate` apply to the next connection accepted.
    """
    loop = asyncio.get_running_loop()
    deadlines = HandshakeDeadlines(handshake_timeout)
    return await loop.create_server(
        lambda: TlsServerProtocol(tls, protocol_factory, deadlines),
        host,
        port,
        reuse_address=reuse_address,
        backlog=backlog,
    )


def _bound_port(server: asyncio.AbstractServer | None) -> int:
    assert isinstance(server, asyncio.Server)
    for sock in server.sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    raise RuntimeError("the server has no TCP socket")


class TlsSite(web.BaseSite):
    """An aiohttp site that serves the runner's application over our TLS seam."""

    __slots__ = ("_bound", "_handshake_timeout", "_host", "_port", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        tls: ServerTls,
        *,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._tls = host, port, tls
        self._handshake_timeout = handshake_timeout
        self._bound: int | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (useful after asking for port 0)."""
        return self._bound if self._bound is not None else self._port

    async def start(self) -> None:
        await super().start()
        factory = self._runner.server
        assert factory is not None, "call runner.setup() first"
        self._server = await start_tls_server(
            self._host,
            self._port,
            self._tls,
            factory,
            handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
        )
        self._bound = _bound_port(self._server)


class TlsAppServer:
    """A running aiohttp application on the TLS seam; `await close()` stops it."""

    def __init__(self, runner: web.AppRunner, site: TlsSite) -> None:
        self.runner = runner
        self.site = site

    @property
    def port(self) -> int:
        return self.site.port

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_aiohttp_app(
    app: web.Application,
    host: str,
    port: int,
    tls: ServerTls,
    *,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    shutdown_timeout: float = 5.0,
    backlog: int = 1024,
) -> TlsAppServer:
    """Serve `app` over TLS on host:port (port 0 picks a free one; see `.port`)."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = TlsSite(runner, host, port, tls, handshake_timeout=handshake_timeout, backlog=backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return TlsAppServer(runner, site)


def request_peer(request: web.BaseRequest) -> PeerIdentity | None:
    """The TLS peer of an aiohttp request served by `serve_aiohttp_app`, or None."""
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info(PEER_INFO_KEY)
    return peer if isinstance(peer, PeerIdentity) else None
