"""Start TLS listeners on the seam: any asyncio protocol, or an aiohttp application.

aiohttp runs unchanged on top of `TlsAppTransport`: its low-level server (`AppRunner.server`) is
an ordinary protocol factory. `TlsSite` plugs into aiohttp's runner like its own `TCPSite`, so
`runner.cleanup()` stops it, and handlers reach the peer with
`request.transport.get_extra_info("iotdps_peer")` (see `request_peer`).

Every HTTP listener runs its app through `http_runner`, which holds what all of them share:
- a deadline for the request head: a client has `request_timeout` seconds, from the end of its
  TLS handshake or of its previous response, to send a complete request line and headers, or
  the connection closes (aiohttp's keep-alive timer does this: it closes a connection that is
  still waiting for a request when it fires; by default it waited an hour, so a client that
  trickled a header in a byte at a time held its connection that long);
- a body the app did not read (refused before reading it, or cut off at its deadline) is read
  and dropped for at most `_LINGER` seconds before the connection closes (aiohttp's default, 10 s,
  gave a client trickling its body 10 s more): long enough for a client on a working network to
  finish sending and read the answer.
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

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "TlsAppServer",
    "TlsSite",
    "http_runner",
    "request_peer",
    "serve_aiohttp_app",
    "start_tls_server",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
_LINGER = 2.0


def http_runner(
    app: web.Application, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT, shutdown_timeout: float = 5.0
) -> web.AppRunner:
    """The AppRunner every HTTP listener of iotdps uses (see the module docstring).

    `request_timeout` is also how long an idle keep-alive connection stays open."""
    return web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=request_timeout,
        lingering_time=_LINGER,
    )


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
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    shutdown_timeout: float = 5.0,
    backlog: int = 1024,
) -> TlsAppServer:
    """Serve `app` over TLS on host:port (port 0 picks a free one; see `.port`)."""
    runner = http_runner(app, request_timeout=request_timeout, shutdown_timeout=shutdown_timeout)
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
