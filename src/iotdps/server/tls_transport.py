"""TLS over asyncio with pyOpenSSL on memory BIOs: one Protocol for the socket, one Transport for the app.

    socket transport  <-- ciphertext -->  TlsServerProtocol  <-- plaintext -->  app protocol
                                          (SSL.Connection,                     (MQTT listener,
                                           memory BIOs)                          aiohttp, ...)

Ciphertext from the socket goes into the Connection with `bio_write`; whatever OpenSSL wants to
send comes out with `bio_read` and goes to the socket. The app protocol is created only once the
handshake has finished, so it cannot write before the handshake by construction, and it then
sees an ordinary `asyncio.Transport` (`TlsAppTransport`), with the peer identity under
`get_extra_info("iotdps_peer")`.

Failure policy: any TLS error, a handshake that outlasts its timeout, or a peer that speaks
something else closes only that connection. Nothing is raised into the event loop. A failed
handshake (a signature that does not verify, a client that rejects our certificate, a protocol
version we refuse, a timeout, a peer that hangs up half-way) is logged at info level with the
peer address and OpenSSL's reason (never key material), through a budget per reason
(`logthrottle`): anyone can cause these, so a flood of them costs a few lines and a count.
Errors after the handshake stay at debug level: the app protocol above reports its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from iotdps import metrics
from iotdps.evidence import PeerIdentity
from iotdps.server.logthrottle import PerReasonLog
from iotdps.server.peers import peer_text
from iotdps.server.tls import (
    ServerTls,
    ciphertext_to_send,
    ciphertext_unread,
    feed_ciphertext,
    handshake_step,
    peer_identity,
    peercert_dict,
    plaintext_pending,
    read_plaintext,
    take_ciphertext,
    write_plaintext,
)

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "PEER_INFO_KEY", "HandshakeDeadlines", "TlsAppTransport", "TlsServerProtocol"]

log = logging.getLogger(__name__)

PEER_INFO_KEY = "iotdps_peer"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# One budget for the whole process: every listener's handshake failures share the log.
_HANDSHAKE_FAILURES = PerReasonLog(log, "TLS handshake failures", rate=1.0, burst=10, event="tls_handshake_failed")


def _handshake_failed(peername: Any, reason: str) -> None:
    metrics.handshake_failure(reason)
    peer = peer_text(peername)
    _HANDSHAKE_FAILURES.log(reason, peer, "TLS handshake with %s failed: %s", peer, reason)


# One TLS record carries at most 16 KiB of plaintext; reading several records before handing
# them to the app saves calls into the app protocol without holding much memory.
_READ_CHUNK = 64 * 1024
_DELIVER_MAX = 256 * 1024
# Plaintext handed to SSL_write per call, so ciphertext reaches the socket in steady pieces.
_WRITE_CHUNK = 256 * 1024


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    CLOSING = "closing"  # we sent (or are sending) close_notify; the socket closes after its buffer drains
    CLOSED = "closed"


class HandshakeDeadlines:
    """The handshake timeouts of one listener's connections, on one timer.

    A timer per connection (call_later, then cancel once the handshake is done, the usual
    case) was a TimerHandle built, pushed on the loop's heap and popped again per device.
    The listener's connections share one timeout, so arrival order is deadline order: the
    timer waits for the oldest one still handshaking, and a finished handshake costs a dict
    removal."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # The listener's open connections, read by the metrics when scraped (one add and one
        # subtract per connection; no metrics call on the connection path).
        self.connections = 0
        self._loop = asyncio.get_running_loop()
        self._due: dict[TlsServerProtocol, float] = {}  # in arrival order, so in deadline order
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol: TlsServerProtocol) -> None:
        deadline = self._due[protocol] = self._loop.time() + self.timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def discard(self, protocol: TlsServerProtocol) -> None:
        self._due.pop(protocol, None)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._due:
            protocol, deadline = next(iter(self._due.items()))
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del self._due[protocol]
            protocol._on_handshake_timeout()


class TlsServerProtocol(asyncio.Protocol):
    """Server side of one TLS connection; plug into `loop.create_server` via `start_tls_server`."""

    def __init__(
        self,
        tls: ServerTls,
        app_protocol_factory: Callable[[], asyncio.BaseProtocol],
        deadlines: HandshakeDeadlines,
    ) -> None:
        """`deadlines`: the listener's shared handshake timer."""
        self._tls = tls
        self._deadlines = deadlines
        self._factory = app_protocol_factory
        self._state = _State.HANDSHAKING
        self._conn: SSL.Connection | None = None
        self._raw: asyncio.Transport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop = asyncio.get_running_loop()
        self._app: asyncio.Protocol | None = None
        self._last_app: asyncio.Protocol | None = None  # for get_protocol() after the connection is gone
        self._app_transport: TlsAppTransport | None = None
        self._peername: Any = None
        self._app_paused = False  # the app asked us to stop delivering plaintext
        self._write_paused = False  # the socket's write buffer is above its high-water mark
        self._drain_scheduled = False
        self._lost_exc: Exception | None = None
        self._eof_from_peer = False
        self._handshake_bytes = False  # the peer sent something: a hang-up is a failed handshake
        # Plaintext the app wrote during this turn of the event loop, sent as one TLS record
        # when the turn ends (see _write_plaintext).
        self._out: list[bytes] = []
        self._out_size = 0
        self._out_scheduled = False

    # -- socket side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        self._peername = transport.get_extra_info("peername")
        self._conn = self._tls.new_connection()
        self._deadlines.add(self)
        self._deadlines.connections += 1

    def data_received(self, data: bytes) -> None:
        if self._state is _State.CLOSED or self._conn is None:
            return
        try:
            feed_ciphertext(self._conn, data)
        except SSL.Error as e:
            self._fail("bio_write", e)
            return
        if self._state is _State.HANDSHAKING:
            self._handshake_bytes = True
            self._continue_handshake()
        else:
            self._drain_plaintext()

    def eof_received(self) -> bool | None:
        # The peer half-closed TCP. TLS has no half-close we support (can_write_eof is False),
        # so tell the app and let the socket transport close; returning False does that.
        self._eof_from_peer = True
        if self._state is _State.HANDSHAKING:
            self._hung_up_during_handshake("the peer closed the connection during the handshake")
            self._state = _State.CLOSED
            return False
        if self._app is not None and self._state is _State.OPEN:
            self._drain_plaintext()
            if self._app is not None:
                self._app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timeout()
        if self._raw is not None:
            self._deadlines.connections -= 1
        if self._state is _State.HANDSHAKING:
            self._hung_up_during_handshake("the connection was lost during the handshake")
        self._state = _State.CLOSED
        app, self._app = self._app, None
        self._conn = None
        if app is not None:
            app.connection_lost(exc if exc is not None else self._lost_exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._app is not None:
            self._app.resume_writing()

    # -- handshake -------------------------------------------------------------------------

    def _continue_handshake(self) -> None:
        assert self._conn is not None
        try:
            handshake_step(self._conn)
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            # Send whatever alert OpenSSL queued, then drop the connection.
            self._flush()
            self._fail("handshake", e)
            return
        self._cancel_timeout()
        self._flush()
        self._on_handshake_done()

    def _on_handshake_done(self) -> None:
        assert self._conn is not None and self._raw is not None
        peer = peer_identity(self._conn)
        log.debug(
            "TLS %s %s with %s; client cert %s",
            peer.tls_version,
            peer.cipher,
            self._peername,
            "none" if peer.leaf is None else ("verified" if peer.ok else "NOT verified: " + peer.explain()),
        )
        self._state = _State.OPEN
        self._app_transport = TlsAppTransport(self, self._raw, self._conn, peer)
        app = self._factory()
        assert isinstance(app, asyncio.Protocol), "the app protocol must be an asyncio.Protocol"
        self._app = self._last_app = app
        app.connection_made(self._app_transport)
        if self._write_paused:
            app.pause_writing()
        # The client may have sent application data in the same flight as its Finished.
        self._drain_plaintext()

    def _on_handshake_timeout(self) -> None:
        if self._state is _State.HANDSHAKING and self._raw is not None:
            _handshake_failed(self._peername, f"not finished within {self._deadlines.timeout:g} s")
            self._state = _State.CLOSED
            self._raw.abort()

    def _hung_up_during_handshake(self, reason: str) -> None:
        if self._handshake_bytes:
            _handshake_failed(self._peername, reason)
        else:  # connected and left without a byte: a port probe, not a TLS client
            log.debug("TLS peer %s left before sending anything", self._peername)

    def _cancel_timeout(self) -> None:
        self._deadlines.discard(self)

    # -- data paths ------------------------------------------------------------------------

    def _drain_plaintext(self) -> None:
        """Decrypt what has arrived and hand it to the app, unless the app paused reading."""
        conn = self._conn
        while self._state is _State.OPEN and conn is not None and self._app is not None and not self._app_paused:
            parts: list[bytes] = []
            size = 0
            closed_by_peer = False
            try:
                while size < _DELIVER_MAX:
                    chunk = read_plaintext(conn, _READ_CHUNK)
                    parts.append(chunk)
                    size += len(chunk)
                    if not plaintext_pending(conn) and not ciphertext_unread(conn):
                        break  # all that arrived is read: no WantReadError to raise and catch
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                closed_by_peer = True
            except SSL.Error as e:
                self._flush()
                self._fail("read", e)
                return
            if parts:
                self._app.data_received(b"".join(parts))
            if closed_by_peer:
                self._on_close_notify()
                return
            if size < _DELIVER_MAX:
                break
        # Reading may queue protocol records (a TLS 1.3 KeyUpdate answer, alerts).
        self._flush()

    def _on_close_notify(self) -> None:
        """The peer sent close_notify: answer with ours, tell the app, close the socket."""
        log.debug("TLS peer %s sent close_notify", self._peername)
        if self._app is not None and self._state is _State.OPEN:
            self._app.eof_received()
        self._start_close()

    def _flush(self) -> None:
        """Move every byte OpenSSL wants to send from the memory BIO to the socket."""
        conn, raw = self._conn, self._raw
        if conn is None or raw is None or raw.is_closing():
            return
        waiting = ciphertext_to_send(conn)
        if waiting:
            raw.write(take_ciphertext(conn, waiting))

    def _write_plaintext(self, data: bytes | bytearray | memoryview) -> None:
        """Queue plaintext; it is encrypted and sent when this turn of the event loop ends.

        An MQTT answer is often several packets written one after another (CONNACK, SUBACK and
        PUBACK for a client that pipelined them): one TLS record and one send() for all of them
        instead of one each halves the per-connection write cost."""
        if self._state is not _State.OPEN or self._conn is None:
            return
        chunk = bytes(data)  # a copy only if the caller passed a mutable buffer
        self._out.append(chunk)
        self._out_size += len(chunk)
        if self._out_size >= _WRITE_CHUNK:
            self._send_out()
        elif not self._out_scheduled:
            self._out_scheduled = True
            self._loop.call_soon(self._send_out)

    def _send_out(self) -> None:
        self._out_scheduled = False
        conn, out = self._conn, self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        if self._state is not _State.OPEN or conn is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = write_plaintext(conn, view[:_WRITE_CHUNK])
                view = view[n:]
                self._flush()
        except SSL.Error as e:
            self._fail("write", e)

    def _start_close(self, *, notify: bool = True) -> None:
        """Send what the app wrote, then (`notify`) our close_notify, then close the socket."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        self._send_out()  # what the app wrote before close() goes out before close_notify
        self._state = _State.CLOSING
        self._cancel_timeout()
        if notify and self._conn is not None:
            try:
                self._conn.shutdown()  # queues our close_notify; we do not wait for the peer's
            except SSL.Error:
                pass
            self._flush()
        if self._raw is not None:
            self._raw.close()  # flushes the socket's buffer first, then connection_lost

    def _abort(self) -> None:
        self._cancel_timeout()
        if self._raw is not None:
            self._raw.abort()

    def _fail(self, where: str, exc: SSL.Error) -> None:
        # OpenSSL's reason strings name the failing check, never key material.
        if self._state is _State.HANDSHAKING:
            _handshake_failed(self._peername, _reason(exc))
        else:
            log.debug("TLS %s error with %s: %s", where, self._peername, _reason(exc))
        was_open = self._state is _State.OPEN
        self._state = _State.CLOSED
        if was_open:
            self._lost_exc = ConnectionResetError(f"TLS {where} error: {_reason(exc)}")
        self._cancel_timeout()
        if self._raw is not None:
            # close(), not abort(): the alert OpenSSL queued (already flushed) should reach the
            # peer so a device learns why; it is a few bytes, the kernel buffer takes them.
            self._raw.close()

    # -- app transport support -------------------------------------------------------------

    def _set_app_paused(self, paused: bool) -> None:
        if self._app_paused == paused:
            return
        self._app_paused = paused
        if self._raw is None or self._raw.is_closing():
            return
        if paused:
            self._raw.pause_reading()
        else:
            self._raw.resume_reading()
            # Plaintext may be waiting inside OpenSSL; deliver it without waiting for more bytes.
            if not self._drain_scheduled:
                self._drain_scheduled = True
                self._loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self._drain_plaintext()

    def _set_app_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        if self._app is not None:
            self._app = protocol
        self._last_app = protocol

    def _get_app_protocol(self) -> asyncio.BaseProtocol:
        assert self._last_app is not None
        return self._last_app

    def _is_closing(self) -> bool:
        return self._state is not _State.OPEN or self._raw is None or self._raw.is_closing()


def _reason(exc: SSL.Error) -> str:
    """OpenSSL's reason strings from an SSL.Error, compactly."""
    try:
        items = exc.args[0]
        if isinstance(items, list) and items:
            return "; ".join(str(i[-1]) for i in items if isinstance(i, tuple))
    except (IndexError, TypeError):
        pass
    return type(exc).__name__


class TlsAppTransport(asyncio.Transport):
    """The plaintext transport an app protocol sees; behaves like asyncio's own SSL transport."""

    def __init__(
        self, owner: TlsServerProtocol, raw: asyncio.Transport, conn: SSL.Connection, peer: PeerIdentity
    ) -> None:
        super().__init__()
        self._owner = owner
        self._raw = raw
        self._conn = conn
        self._peer = peer
        self._peercert: dict[str, Any] | None = None  # built on first request: few callers want it

    def __repr__(self) -> str:
        return f"<TlsAppTransport {self._peer.tls_version} peer={self._raw.get_extra_info('peername')}>"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == PEER_INFO_KEY:
            return self._peer
        if name == "sslcontext":
            # aiohttp decides request.secure / the https scheme on "is this non-None".
            return self._conn.get_context()
        if name == "peercert":
            if self._peercert is None and self._peer.leaf is not None:
                self._peercert = peercert_dict(self._peer.leaf)
            return self._peercert
        if name == "ssl_object":
            return None  # no ssl.SSLObject exists; use "iotdps_peer"
        if name == "cipher":
            return (self._peer.cipher, self._peer.tls_version, self._conn.get_cipher_bits())
        if name == "compression":
            return None
        return self._raw.get_extra_info(name, default)

    # -- reading ----------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._owner._app_paused and not self._owner._is_closing()

    def pause_reading(self) -> None:
        self._owner._set_app_paused(True)

    def resume_reading(self) -> None:
        self._owner._set_app_paused(False)

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if data:
            self._owner._write_plaintext(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot half-close")

    def can_write_eof(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        # Ciphertext never waits in the BIO (every record is flushed): the socket's buffer
        # plus the plaintext queued for the end of this loop turn is all.
        return self._raw.get_write_buffer_size() + self._owner._out_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    # -- lifecycle --------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._owner._is_closing()

    def close(self) -> None:
        """Send close_notify, then close the socket once its buffer is written."""
        self._owner._start_close()

    def close_after_goodbye(self) -> None:
        """Close once the app protocol has ended the session at its own layer (MQTT's
        DISCONNECT): what was written is sent, then the socket closes without TLS's
        close_notify. The peer has said it is done and, like paho, closes its socket right
        after; a close_notify would meet a closed socket (and cost a record and a send per
        connection). Truncation, which close_notify guards against, cannot hide anything
        once the peer has ended the session itself."""
        self._owner._start_close(notify=False)

    def abort(self) -> None:
        self._owner._state = _State.CLOSED
        self._owner._abort()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._owner._get_app_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._owner._set_app_protocol(protocol)
