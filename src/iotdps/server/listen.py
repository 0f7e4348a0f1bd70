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
  finish sending and read the answer;
- one log line, without a traceback, for a request aiohttp's parser refuses (a 10,000-character
  URL, too many headers, a bad request line): the client's mistake, answered 400 by aiohttp
  itself, budgeted per kind like TLS handshake failures (`logthrottle`). A handler's own bug
  still logs its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from iotdps import metrics
from iotdps.evidence import PeerIdentity
from iotdps.server.bind_errors import ListenError
from iotdps.server.logthrottle import PerReasonLog
from iotdps.server.tls import ServerTls
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

_http_log = logging.getLogger("iotdps.http")
_REFUSED_REQUESTS = PerReasonLog(_http_log, "malformed HTTP requests", rate=1.0, burst=10, event="http_request_refused")


class _HttpServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, except that a request its parser refused is one budgeted line.

    aiohttp logs those through `logger.exception("Error handling request from %s", remote,
    exc_info=exc)`, a traceback per malformed request that anyone can send."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            peer = str(args[0]) if args else "?"
            # The parser's message can quote the request (the URL it found too long): keep the
            # part before the quote, and never more than a line's worth.
            words = str(exc_info.message).split(":", 1)[0].strip()[:120] or "malformed request"
            kind = type(exc_info).__name__
            _REFUSED_REQUESTS.log(
                kind, peer, "HTTP request from %s refused with %d: %s (%s)", peer, exc_info.code, words, kind
            )
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


_HTTP_SERVER_LOG = _HttpServerLog()


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
        logger=_HTTP_SERVER_LOG,
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
    A port that cannot be bound raises ListenError, which says why in words.
    """
    loop = asyncio.get_running_loop()
    deadlines = HandshakeDeadlines(handshake_timeout)
    try:
        server = await loop.create_server(
            lambda: TlsServerProtocol(tls, protocol_factory, deadlines),
            host,
            port,
            reuse_address=reuse_address,
            backlog=backlog,
        )
    except OSError as exc:
        raise ListenError(host, port, exc) from None
    listener = f"{host}:{_bound_port(server)}"
    # Held weakly by the metrics: a closed server's listener drops out with its last connection.
    metrics.track_listener(deadlines, lambda d: {listener: d.connections})
    return server


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
