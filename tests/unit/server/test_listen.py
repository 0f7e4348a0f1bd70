"""aiohttp and paho over the TLS seam; misbehaving peers close only their own connection."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from iotdps.server.listen import TlsAppServer, request_peer, serve_aiohttp_app, start_tls_server
from iotdps.server.tls_transport import PEER_INFO_KEY

from .conftest import Pki, ping, start_echo

BIG = os.urandom(1024 * 1024)


def build_app() -> web.Application:
    async def whoami(request: web.Request) -> web.Response:
        peer = request_peer(request)
        assert peer is not None
        cn = "" if peer.leaf is None else peer.leaf.subject.rfc4514_string()
        return web.json_response(
            {
                "cn": cn,
                "ok": peer.ok,
                "secure": request.secure,
                "scheme": request.scheme,
                "same": request.transport.get_extra_info(PEER_INFO_KEY) is peer,
            }  # type: ignore[union-attr]
        )

    async def echo_body(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("mqtt",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                if msg.data[:1] == b"\x10":  # an MQTT CONNECT: answer CONNACK, accepted
                    await ws.send_bytes(b"\x20\x02\x00\x00")
                else:
                    await ws.send_bytes(msg.data)
        return ws

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/echo", echo_body)
    app.router.add_get("/big", big)
    app.router.add_get("/$iothub/websocket", ws_echo)
    return app


@pytest.fixture
async def site(pki: Pki) -> AsyncIterator[TlsAppServer]:
    server = await serve_aiohttp_app(build_app(), "127.0.0.1", 0, pki.server_tls(), handshake_timeout=5)
    yield server
    await server.close()


def session(pki: Pki, limit: int = 100) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=str(pki.server_ca_file))
    ctx.load_cert_chain(pki.dev1.chain_file, pki.dev1.key_file)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=limit, force_close=True),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def test_aiohttp_handler_sees_peer(pki: Pki, site: TlsAppServer) -> None:
    async with session(pki) as s, s.get(f"https://localhost:{site.port}/whoami") as r:
        assert r.status == 200
        body = await r.json()
    assert body == {"cn": "CN=dev-1", "ok": True, "secure": True, "scheme": "https", "same": True}


async def test_aiohttp_large_bodies_both_ways(pki: Pki, site: TlsAppServer) -> None:
    async with session(pki) as s:
        async with s.post(f"https://localhost:{site.port}/echo", data=BIG) as r:
            assert r.status == 200 and await r.read() == BIG
        async with s.get(f"https://localhost:{site.port}/big") as r:
            assert await r.read() == BIG


async def test_aiohttp_many_concurrent_connections(pki: Pki, site: TlsAppServer) -> None:
    async with session(pki, limit=0) as s:

        async def one(i: int) -> bytes:
            async with s.post(f"https://localhost:{site.port}/echo", data=b"n%d" % i) as r:
                return await r.read()

        got = await asyncio.gather(*(one(i) for i in range(50)))
    assert got == [b"n%d" % i for i in range(50)]


async def test_aiohttp_websocket_binary_echo(pki: Pki, site: TlsAppServer) -> None:
    async with (
        session(pki) as s,
        s.ws_connect(f"https://localhost:{site.port}/$iothub/websocket", protocols=("mqtt",)) as ws,
    ):
        assert ws.protocol == "mqtt"
        for payload in (b"\x00\x01\x02", os.urandom(200_000)):
            await ws.send_bytes(payload)
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == payload


@pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")
async def test_paho_websocket_upgrade_and_connack(pki: Pki, site: TlsAppServer) -> None:
    """paho-mqtt 1.6.1 exactly as the Azure SDK drives it (websockets=True), against aiohttp."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    result: dict[str, int] = {}

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: int) -> None:
        result["rc"] = rc
        done.set()

    client = mqtt.Client(client_id="dev-1", clean_session=False, protocol=mqtt.MQTTv311, transport="websockets")
    client.username_pw_set("scope/registrations/dev-1/api-version=2019-03-31")
    client.ws_set_options(path="/$iothub/websocket")
    client.tls_set(
        ca_certs=str(pki.server_ca_file),
        certfile=str(pki.dev1.chain_file),
        keyfile=str(pki.dev1.key_file),
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLSv1_2,
    )
    client.on_connect = on_connect

    def run() -> None:
        client.connect("localhost", site.port, keepalive=30)
        client.loop_start()

    try:
        await asyncio.to_thread(run)
        assert await asyncio.to_thread(done.wait, 10), "paho never reported a CONNACK"
    finally:
        client.loop_stop()
        client.disconnect()
    assert result["rc"] == 0


async def test_garbage_and_silence_close_only_that_connection(pki: Pki) -> None:
    # Bounds are fractions of the handshake timeout, wide enough for a busy 2-core machine:
    # "at once" is well before the timer, "at the timeout" is not long before it.
    timeout = 2.0
    server, info = await start_echo(pki.server_tls(), handshake_timeout=timeout)
    port = info.port
    try:
        # A long-lived good connection, open throughout.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_ctx(pki.dev1), server_hostname="localhost"
        )

        async def closed_by_server(payload: bytes) -> float:
            loop = asyncio.get_running_loop()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            t0 = loop.time()
            if payload:
                w.write(payload)
            data = await asyncio.wait_for(r.read(), timeout + 10)  # ends at the server's FIN/RST
            w.close()
            assert b"HTTP" not in data
            return loop.time() - t0

        # Garbage, plain HTTP, a truncated TLS record header: closed at once (an alert at most),
        # not left to the handshake timer.
        for payload in (os.urandom(300), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00"):
            try:
                elapsed = await closed_by_server(payload)
            except ConnectionResetError:
                continue
            if payload != b"\x16\x03\x01\x00":
                assert elapsed < timeout / 2
        # A client that connects and says nothing is dropped at the handshake timeout.
        elapsed = await closed_by_server(b"")
        assert timeout / 2 <= elapsed < timeout + 8

        writer.write(b"alive")
        assert await reader.readexactly(5) == b"alive"
        assert await ping(port, pki.client_ctx(pki.dev1)) == b"ping"
        assert len(info.seen) == 2  # only the two TLS clients reached the app
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()


async def test_flow_control_pause_reading(pki: Pki) -> None:
    """While the app has paused reading, nothing is delivered; on resume everything arrives."""
    got: list[bytes] = []
    transports: list[asyncio.Transport] = []
    lost = asyncio.Event()

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)
            transport.pause_reading()

        def data_received(self, data: bytes) -> None:
            got.append(data)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    server = await start_tls_server("127.0.0.1", 0, pki.server_tls(), Slow)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_ctx(pki.dev1), server_hostname="localhost"
        )
        writer.write(b"a" * 100_000)
        await writer.drain()
        await asyncio.sleep(0.2)
        (t,) = transports
        assert got == [] and not t.is_reading()
        t.resume_reading()
        for _ in range(50):
            if sum(map(len, got)) >= 100_000:
                break
            await asyncio.sleep(0.02)
        assert b"".join(got) == b"a" * 100_000 and t.is_reading()
        writer.close()
        await asyncio.wait_for(lost.wait(), 5)
        assert t.is_closing()
    finally:
        server.close()


async def test_app_close_sends_close_notify(pki: Pki) -> None:
    class Bye(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"bye")
            transport.close()
            assert transport.is_closing()
            transport.write(b"ignored after close")

    server = await start_tls_server("127.0.0.1", 0, pki.server_tls(), Bye)
    port = server.sockets[0].getsockname()[1]
    try:

        def client() -> tuple[bytes, bytes]:
            ctx = pki.client_ctx(pki.dev1)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                first = s.recv(10)
                # A clean close_notify reads as b"" (an unclean one raises SSLEOFError).
                return first, s.recv(10)

        first, rest = await asyncio.to_thread(client)
        assert first == b"bye" and rest == b""
    finally:
        server.close()


async def test_data_then_close_notify_in_one_flight(pki: Pki) -> None:
    """Several records and the peer's close_notify arrive together: the app gets all the data,
    then eof_received, and the server answers with its own close_notify."""
    got: list[bytes] = []
    eof = asyncio.get_running_loop().create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.append(data)

        def eof_received(self) -> bool | None:
            if not eof.done():
                eof.set_result(b"".join(got))
            return None

    server = await start_tls_server("127.0.0.1", 0, pki.server_tls(), Sink)
    port = server.sockets[0].getsockname()[1]
    try:

        def client() -> bytes:
            ctx = pki.client_ctx(pki.dev1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # Nagle: fewer segments
                s = ctx.wrap_socket(raw, server_hostname="localhost")
                for i in range(3):
                    s.sendall(b"record %d;" % i)  # three TLS records back to back
                plain = s.unwrap()  # our close_notify right behind them; waits for the server's
                return plain.recv(10)

        after = await asyncio.to_thread(client)
        assert await asyncio.wait_for(eof, 5) == b"record 0;record 1;record 2;"
        assert after == b""  # the server closed the TCP connection after its close_notify
    finally:
        server.close()


async def test_writes_in_one_loop_turn_leave_as_one_record(pki: Pki) -> None:
    """Writes made during one turn of the event loop are sent as one TLS record, in order;
    a write in a later turn is a record of its own; close() sends what is queued first."""
    buffered: list[int] = []

    class Chatty(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            self.transport = transport
            for piece in (b"con", b"nack", bytearray(b"-sub"), memoryview(b"ack")):
                transport.write(piece)
            buffered.append(transport.get_write_buffer_size())  # the queued plaintext counts
            asyncio.get_running_loop().call_later(0.05, self.later)

        def later(self) -> None:
            self.transport.write(b"|reply")
            self.transport.close()

    server = await start_tls_server("127.0.0.1", 0, pki.server_tls(), Chatty)
    port = server.sockets[0].getsockname()[1]
    try:

        def client() -> tuple[bytes, list[int]]:
            ctx = pki.client_ctx(pki.dev1)  # TLS 1.2, as the SDK pins it: record types are visible
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
            records: list[int] = []
            plain = b""
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())
                        incoming.write(raw.recv(65536))
                raw.sendall(outgoing.read())
                # Records that came in the same read as the server's Finished are still
                # waiting in the BIO, undecrypted: they are the start of the stream.
                stream = incoming.read()
                while chunk := raw.recv(65536):
                    stream += chunk
            # Walk the record headers (type, version, length) of what followed the handshake.
            pos = 0
            while pos + 5 <= len(stream):
                records.append(stream[pos])
                pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
            incoming.write(stream)
            incoming.write_eof()
            try:
                while data := tls.read(65536):
                    plain += data
            except ssl.SSLZeroReturnError:
                pass
            return plain, records

        plain, records = await asyncio.to_thread(client)
        assert plain == b"connack-suback|reply"
        app_data, alert = 23, 21
        assert records == [app_data, app_data, alert]  # two writes' worth, then close_notify
        assert buffered and buffered[0] >= len(b"connack-suback")
    finally:
        server.close()


async def test_handshake_deadlines_are_per_connection_on_one_timer(pki: Pki) -> None:
    """The listener's connections share one handshake timer; each is still dropped at its own
    deadline: a silent client that came later is not cut short by an earlier one's."""
    # The second silent client comes `stagger` later: cut short, it would be dropped with the
    # first, after what was left of the first's timeout (0.4 s); on its own deadline, 1.6 s.
    # The bounds sit halfway, so a busy machine's delays cannot move either case across them.
    timeout, stagger = 1.6, 1.2
    server, info = await start_echo(pki.server_tls(), handshake_timeout=timeout)
    loop = asyncio.get_running_loop()
    try:

        async def silent(delay: float) -> tuple[float, float]:
            """(how long the connection lived, when it was dropped)."""
            await asyncio.sleep(delay)
            r, w = await asyncio.open_connection("127.0.0.1", info.port)
            t0 = loop.time()
            await asyncio.wait_for(r.read(), timeout + 10)  # ends when the server drops us
            w.close()
            return loop.time() - t0, loop.time()

        async def completes() -> bytes:
            await asyncio.sleep(0.1)
            return await ping(info.port, pki.client_ctx(pki.dev1))

        (first, first_end), (second, second_end), good = await asyncio.gather(silent(0), silent(stagger), completes())
        assert good == b"ping"  # a finished handshake leaves the timer to the others
        assert timeout / 2 <= first < timeout + 8
        left_of_first = timeout - stagger
        assert (left_of_first + timeout) / 2 <= second < timeout + 8  # its own timeout, not the rest of the first's
        assert second_end - first_end >= stagger / 2  # dropped at its own deadline, not with the first
    finally:
        server.close()
