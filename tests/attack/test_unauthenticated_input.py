"""What a peer can do before (or around) authenticating: nothing it sends may grow the server
unboundedly, hold a connection past its deadline, raise a traceback, or fail unrecorded.

Every test drives a real `iotdps up` (tests/iotdps_testing/server.py) with raw clients over real
TLS on loopback: ssl sockets, hand-built websocket frames and MQTT bytes, HTTP by hand. The
server runs with one hub on an address of its own, so the hub's websocket listener and the
management port it serves on the hub address are attacked too. Memory is the server process's
resident set, read from /proc/<pid>/status while the attacking connection is still open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from iotdps.access import make_service_sas
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived, Event, PublishReceived, SubAckReceived
from iotdps.sas import make_sas_token
from iotdps_testing.devcerts import self_signed_device
from iotdps_testing.net import free_loopback_address
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MGMT = 8443
_PORTS = (8883, 443, MGMT)
# What "a few MB" allows: the attack sends 32 MB; the server may allocate a little on the way.
SENT = 32 << 20
GROWTH_LIMIT_KB = 8 << 10
DEADLINE = 2.0  # limits.connect_timeout and tls.handshake_timeout of the deadline server
DEEP = 40  # nesting levels: past the 32 allowed, below what Python's parser can take
VERY_DEEP = 20_000  # past Python's recursion limit, in 40 KB (under every body and packet limit)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Default limits; one hub on its own address (its own 443 websocket app, and the
    management port served there for the hub service API)."""
    tmp = tmp_path_factory.mktemp("unauth")
    hub = free_loopback_address(_PORTS)
    srv = start_server(
        tmp, config=f'[[hubs]]\nhost_name = "{hub}"\nbind = "{hub}"\n', address=free_loopback_address(_PORTS)
    )
    srv.env["HUB"] = hub
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("deadlines")
    config = f"[tls]\nhandshake_timeout = {DEADLINE}\n[limits]\nconnect_timeout = {DEADLINE}\n"
    srv = start_server(tmp, config=config)
    try:
        yield srv
    finally:
        srv.stop()


def _hub(server: RunningServer) -> str:
    return server.env["HUB"]


def _rss_kb(server: RunningServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


def _tls(server: RunningServer, address: str, port: int, *, timeout: float = 10.0) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    raw = socket.create_connection((address, port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname=address)


def _send_flood(sock: ssl.SSLSocket, total: int, chunk: bytes = b"\0" * (1 << 20)) -> int:
    """Send up to `total` bytes; stop quietly when the server has closed. Returns bytes sent."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # ssl.SSLError included: the server closed the connection under us
        pass
    return sent


def _closed_within(sock: ssl.SSLSocket | socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` within `seconds` (whatever it sends first is read)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(max(0.05, left))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def _no_tracebacks(server: RunningServer) -> None:
    log = server.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-4000:]


# --------------------------------------------------------------------------- oversized input


def _ws_upgrade(sock: ssl.SSLSocket, host: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /$iothub/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, "the server closed the connection instead of upgrading"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head[:200]


@pytest.mark.parametrize("listener", ["dps", "hub"])
def test_a_huge_websocket_frame_is_refused_from_its_header(server: RunningServer, listener: str) -> None:
    """One binary frame announcing 512 MB, before any MQTT CONNECT: the server must close the
    connection on reading the frame's header, not buffer the payload (it grew by ~500 MB)."""
    address = server.address if listener == "dps" else _hub(server)
    warm = _tls(server, address, 443)  # first-use allocations are not the attack's
    _ws_upgrade(warm, address)
    warm.close()
    before = _rss_kb(server)
    sock = _tls(server, address, 443)
    try:
        _ws_upgrade(sock, address)
        header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 512 << 20) + os.urandom(4)  # masked, as clients must
        sock.sendall(header)
        _send_flood(sock, SENT)
        grown = _rss_kb(server) - before
        assert grown < GROWTH_LIMIT_KB, f"the server grew by {grown} KiB for one unauthenticated frame"
        assert _closed_within(sock, 10), "the connection stayed open after an oversized frame"
    finally:
        sock.close()
    assert server.process.poll() is None
    _no_tracebacks(server)


def _http_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("listener", "method", "path"),
    [
        ("dps-443", "PUT", "/{scope}/registrations/flood-1/register?api-version=2019-03-31"),
        ("dps-mgmt", "PUT", "/enrollments/flood-1?api-version=2021-10-01"),
        ("hub-mgmt", "PUT", "/devices/flood-1?api-version=2021-04-12"),
    ],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_huge_http_body_before_authentication_is_not_buffered(
    server: RunningServer, listener: str, method: str, path: str, framing: str
) -> None:
    """No credentials, an 8 GiB body: refused (413 or 401) and never held in memory."""
    address = _hub(server) if listener.startswith("hub") else server.address
    port = 443 if listener.endswith("443") else MGMT
    headers = {"Content-Type": "application/json"}
    if framing == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        chunk = b"100000\r\n" + b"[" * (1 << 20) + b"\r\n"
    else:
        headers["Content-Length"] = str(8 << 30)
        chunk = b"[" * (1 << 20)
    before = _rss_kb(server)
    sock = _tls(server, address, port)
    try:
        sock.sendall(_http_head(method, path.format(scope=server.id_scope), address, headers))
        _send_flood(sock, SENT, chunk)
        grown = _rss_kb(server) - before
        assert grown < GROWTH_LIMIT_KB, f"the server grew by {grown} KiB for one unauthenticated body"
        sock.settimeout(10)
        answer = sock.recv(4096)
        assert re.match(rb"HTTP/1\.[01] (413|401|400) ", answer), answer[:200]
        # aiohttp reads and drops what follows a refused body for at most 10 s, then closes.
        assert _closed_within(sock, 20)
    finally:
        sock.close()
    _no_tracebacks(server)


def test_an_mqtt_packet_claiming_a_huge_remaining_length_is_refused(server: RunningServer) -> None:
    """A CONNECT header announcing 256 MB (the most MQTT can say) is refused on the spot."""
    before = _rss_kb(server)
    sock = _tls(server, server.address, 8883)
    try:
        sock.sendall(bytes([0x10, 0xFF, 0xFF, 0xFF, 0x7F]))
        _send_flood(sock, SENT)
        grown = _rss_kb(server) - before
        assert grown < GROWTH_LIMIT_KB, f"the server grew by {grown} KiB for one unauthenticated packet"
        assert _closed_within(sock, 10)
    finally:
        sock.close()
    _no_tracebacks(server)


# --------------------------------------------------------------------------- deadlines


def _connect_bytes(server: RunningServer) -> bytes:
    username = f"{server.id_scope}/registrations/slow-1/api-version=2019-03-31"
    return ClientSession().connect("slow-1", username, "SharedAccessSignature sr=x&sig=y&se=1", keepalive=60)


def _trickle_then_wait(sock: ssl.SSLSocket | socket.socket, data: bytes, every: float, limit: float) -> float | None:
    """Send `data` one byte every `every` seconds (never all of it); seconds until the server
    closed the connection, or None if it was still open after `limit`."""
    start = time.monotonic()
    for byte in data[:-1]:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - start
        if _closed_within(sock, every):
            return time.monotonic() - start
        if time.monotonic() - start > limit:
            return None
    return time.monotonic() - start if _closed_within(sock, limit - (time.monotonic() - start)) else None


def _dropped_after(
    server: RunningServer, opener: Callable[[RunningServer], tuple[ssl.SSLSocket | socket.socket, bytes]]
) -> float | None:
    sock, trickle = opener(server)
    try:
        if not trickle:
            start = time.monotonic()
            return time.monotonic() - start if _closed_within(sock, DEADLINE + 8) else None
        return _trickle_then_wait(sock, trickle, 0.25, DEADLINE + 8)
    finally:
        sock.close()


def _mqtt_silent(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    return _tls(server, server.address, 8883), b""


def _mqtt_trickle(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    return _tls(server, server.address, 8883), _connect_bytes(server)


def _websocket_silent(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    sock = _tls(server, server.address, 443)
    _ws_upgrade(sock, server.address)
    return sock, b""


def _http_trickle(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    head = _http_head("GET", "/enrollments/x?api-version=2021-10-01", server.address, {"X-Padding": "a" * 200})
    return _tls(server, server.address, MGMT), head


def _http_body_trickle(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    path = f"/{server.id_scope}/registrations/slow-1/register?api-version=2019-03-31"
    head = _http_head("PUT", path, server.address, {"Content-Type": "application/json", "Content-Length": "200"})
    sock = _tls(server, server.address, 443)
    sock.sendall(head)
    return sock, b'{"registrationId": "slow-1", "payload": "' + b"a" * 150 + b'"}'


def _tls_trickle(server: RunningServer) -> tuple[ssl.SSLSocket | socket.socket, bytes]:
    # A real ClientHello, one byte at a time: the handshake deadline, not the app's, applies.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server.address)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return socket.create_connection((server.address, 8883), timeout=10), outgoing.read()


@pytest.mark.parametrize(
    "opener",
    [_mqtt_silent, _mqtt_trickle, _websocket_silent, _http_trickle, _http_body_trickle, _tls_trickle],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_client_that_does_not_say_who_it_is_is_dropped_at_the_deadline(
    deadline_server: RunningServer, opener: Callable[[RunningServer], tuple[ssl.SSLSocket | socket.socket, bytes]]
) -> None:
    """No CONNECT, a CONNECT or request sent a byte at a time, a websocket that never speaks,
    a ClientHello that never ends: each is dropped at its deadline (2 s here), not before."""
    dropped = _dropped_after(deadline_server, opener)
    assert dropped is not None, "the connection was still open long after its deadline"
    assert DEADLINE - 0.5 <= dropped <= DEADLINE + 6, f"dropped after {dropped:.2f} s"
    assert deadline_server.process.poll() is None


# --------------------------------------------------------------------------- deep JSON


def _nested(depth: int) -> str:
    """A value `depth` levels deep: objects to the limit's neighbourhood, arrays beyond (2 bytes a level)."""
    if depth <= 100:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "1" + "]" * depth


def _policy_key(server: RunningServer, policy: str) -> str:
    doc = json.loads((server.data_dir / "access-policies.json").read_text())
    return str(next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy))


def _https(
    server: RunningServer, address: str, port: int, method: str, path: str, body: str | bytes | None, **headers: str
) -> tuple[int, str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=server.server_ca)
    conn = http.client.HTTPSConnection(address, port, context=context, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
        answer = conn.getresponse()
        return answer.status, answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _management(server: RunningServer, address: str, method: str, path: str, body: str, policy: str) -> tuple[int, str]:
    token = make_service_sas(f"{address}:{MGMT}", policy, _policy_key(server, policy))
    return _https(server, address, MGMT, method, path, body, Authorization=token)


@pytest.mark.parametrize("depth", [DEEP, VERY_DEEP])
def test_deeply_nested_json_gets_a_400_from_the_management_and_hub_apis(server: RunningServer, depth: int) -> None:
    owner, hub = "provisioningserviceowner", _hub(server)
    twin = f'{{"tags": {_nested(depth)}}}'
    cases = [
        ("PUT", "/enrollments/deep-1?api-version=2021-10-01", server.address, owner,
         f'{{"registrationId": "deep-1", "attestation": {{"type": "symmetricKey"}}, "initialTwin": {twin}}}'),
        ("POST", "/explain?api-version=2021-10-01", server.address, owner,
         f'{{"registrationId": "deep-1", "symmetricKey": "a", "x": {_nested(depth)}}}'),
        ("PUT", "/devices/deep-1?api-version=2021-04-12", hub, "iothubowner",
         f'{{"deviceId": "deep-1", "tags": {_nested(depth)}}}'),
    ]  # fmt: skip
    for method, path, address, policy, body in cases:
        status, text = _management(server, address, method, path, body, policy)
        assert status == 400, (path, status, text[:300])
        assert "nested deeper than 32 levels" in text, text[:300]
    _no_tracebacks(server)


@pytest.mark.parametrize("depth", [DEEP, VERY_DEEP])
def test_a_deeply_nested_register_body_gets_a_400_over_https(server: RunningServer, depth: int) -> None:
    path = f"/{server.id_scope}/registrations/deep-2/register?api-version=2019-03-31"
    body = f'{{"registrationId": "deep-2", "payload": {_nested(depth)}}}'
    status, text = _https(server, server.address, 443, "PUT", path, body)
    assert status == 400, (status, text[:300])
    assert "nested deeper than 32 levels" in text
    _no_tracebacks(server)


def _events_until(sock: ssl.SSLSocket, session: ClientSession, wanted: Callable[[Event], bool]) -> Event:
    deadline = time.monotonic() + 15
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        assert data, "the server dropped the connection"
        for event in session.receive_data(data):
            if wanted(event):
                return event
    raise AssertionError("no answer from the server")


def test_a_deeply_nested_register_payload_gets_a_400_over_mqtt(server: RunningServer) -> None:
    server.cli("enrollment", "create", "deep-3", "--symmetric-key")
    key, _ = server.symmetric_keys("enrollment", "deep-3")
    token = make_sas_token(server.id_scope, "deep-3", key, int(time.time()) + 600)
    sock, session, code = dps_connect(server, "deep-3", token)
    try:
        assert code == 0
        sock.sendall(session.subscribe([("$dps/registrations/res/#", 1)])[1])
        _events_until(sock, session, lambda e: isinstance(e, SubAckReceived))
        for rid, depth in (("1", DEEP), ("2", VERY_DEEP)):
            body = f'{{"registrationId": "deep-3", "payload": {_nested(depth)}}}'.encode()
            sock.sendall(session.publish(f"$dps/registrations/PUT/iotdps-register/?$rid={rid}", body, 1)[1])
            answer = _events_until(sock, session, lambda e: isinstance(e, PublishReceived) and "res/" in e.topic)
            assert isinstance(answer, PublishReceived)
            assert answer.topic.startswith("$dps/registrations/res/400/"), answer.topic
            assert f"$rid={rid}" in answer.topic
            assert b"nested deeper than 32 levels" in answer.payload
    finally:
        sock.close()
    _no_tracebacks(server)


def _hub_token(hub: str, device_id: str, key: str) -> str:
    sr = quote(f"{hub}/devices/{device_id}", safe="")
    expiry = int(time.time()) + 600
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={quote(sig.decode(), safe='')}&se={expiry}"


def test_a_deeply_nested_reported_patch_gets_status_400_and_the_connection_lives(server: RunningServer) -> None:
    """IoT Hub answers a twin PATCH it cannot take with 400 on the response topic; a patch
    nested past Python's recursion limit used to drop the connection with a traceback."""
    hub, key = _hub(server), base64.b64encode(os.urandom(32)).decode()
    device = {
        "deviceId": "deep-4",
        "status": "enabled",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}},
    }
    status, text = _management(
        server, hub, "PUT", "/devices/deep-4?api-version=2021-04-12", json.dumps(device), "iothubowner"
    )
    assert status == 200, text
    session = ClientSession()
    sock = _tls(server, hub, 8883)
    try:
        username = f"{hub}/deep-4/?api-version=2021-04-12"
        sock.sendall(session.connect("deep-4", username, _hub_token(hub, "deep-4", key), keepalive=60))
        connack = _events_until(sock, session, lambda e: isinstance(e, ConnAckReceived))
        assert isinstance(connack, ConnAckReceived) and connack.return_code == 0
        sock.sendall(session.subscribe([("$iothub/twin/res/#", 0)])[1])
        _events_until(sock, session, lambda e: isinstance(e, SubAckReceived))
        for rid, depth in (("1", DEEP), ("2", VERY_DEEP)):
            patch = f'{{"a": {_nested(depth)}}}'.encode()
            sock.sendall(session.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={rid}", patch)[1])
            answer = _events_until(sock, session, lambda e: isinstance(e, PublishReceived))
            assert isinstance(answer, PublishReceived)
            assert answer.topic.startswith("$iothub/twin/res/400/") and f"$rid={rid}" in answer.topic, answer.topic
        # Still connected and served: a sane patch is taken.
        sock.sendall(session.publish("$iothub/twin/PATCH/properties/reported/?$rid=3", b'{"ok": true}')[1])
        answer = _events_until(sock, session, lambda e: isinstance(e, PublishReceived))
        assert isinstance(answer, PublishReceived) and answer.topic.startswith("$iothub/twin/res/204/"), answer.topic
    finally:
        sock.close()
    _no_tracebacks(server)


# --------------------------------------------------------------------------- long URLs


@pytest.mark.parametrize("listener", ["dps-443", "dps-mgmt", "hub-443", "hub-mgmt"])
def test_a_10000_character_url_is_refused_without_a_traceback(server: RunningServer, listener: str) -> None:
    address = _hub(server) if listener.startswith("hub") else server.address
    port = 443 if listener.endswith("443") else MGMT
    sock = _tls(server, address, port)
    try:
        sock.sendall(_http_head("GET", "/" + "a" * 10_000, address, {}))
        sock.settimeout(10)
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert re.match(rb"HTTP/1\.[01] (400|414) ", answer), answer[:200]
    deadline = time.monotonic() + 5
    while "HTTP request from" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(r"HTTP request from \S+ refused with 400", server.log()), server.log()[-3000:]
    _no_tracebacks(server)


# --------------------------------------------------------------------------- TLS handshake failures


def _spoil_certificate_verify(record: bytearray) -> bool:
    """Flip the last signature byte of a CertificateVerify message in a plaintext handshake record."""
    pos = 5
    while pos + 4 <= len(record):
        kind, length = record[pos], int.from_bytes(record[pos + 1 : pos + 4], "big")
        if kind == 15 and pos + 4 + length <= len(record):  # CertificateVerify
            record[pos + 4 + length - 1] ^= 0x01
            return True
        pos += 4 + length
    return False


def _handshake_with_a_signature_that_does_not_verify(
    server: RunningServer, cert_file: Path, key_file: Path
) -> tuple[int, bool]:
    """A TLS 1.2 handshake presenting a real client certificate whose CertificateVerify
    signature is spoiled on the way: to the server, a device holding a valid certificate and
    the wrong key. (TLS 1.2 sends CertificateVerify in clear; OpenSSL will not pair a
    certificate with a key that does not match it, so the wire is where it can be done.)
    Returns the client's port and whether a CertificateVerify was spoiled."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=server.server_ca)
    context.load_cert_chain(cert_file, key_file)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server.address)
    sock = socket.create_connection((server.address, 8883), timeout=10)
    port = sock.getsockname()[1]
    pending, spoiled, encrypted = bytearray(), False, False
    try:
        for _ in range(20):
            try:
                tls.do_handshake()
                finished = True
            except ssl.SSLWantReadError:
                finished = False
            except (ssl.SSLError, OSError):
                break
            pending += outgoing.read()
            while len(pending) >= 5 and len(pending) >= 5 + int.from_bytes(pending[3:5], "big"):
                size = 5 + int.from_bytes(pending[3:5], "big")
                record = bytearray(pending[:size])
                del pending[:size]
                encrypted = encrypted or record[0] == 20  # ChangeCipherSpec: what follows is encrypted
                if record[0] == 22 and not encrypted and not spoiled:
                    spoiled = _spoil_certificate_verify(record)
                sock.sendall(record)
            if finished:
                break
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    finally:
        sock.close()
    return port, spoiled


def _wait_for_log(server: RunningServer, pattern: str, seconds: float = 10) -> re.Match[str] | None:
    deadline = time.monotonic() + seconds
    while True:
        found = re.search(pattern, server.log())
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_handshake_whose_signature_does_not_verify_is_logged(server: RunningServer, tmp_path: Path) -> None:
    device = self_signed_device(tmp_path, "wrong-key-1")
    server.cli("enrollment", "create", "wrong-key-1", "--cert", str(device.cert_file))
    port, spoiled = _handshake_with_a_signature_that_does_not_verify(server, device.cert_file, device.key_file)
    assert spoiled, "the client sent no CertificateVerify to spoil"
    line = _wait_for_log(server, rf"TLS handshake with 127\.[0-9.]+:{port} failed: [^\n]*")
    assert line is not None, server.log()[-3000:]
    assert "signature" in line.group(0), line.group(0)


def test_a_flood_of_failed_handshakes_costs_a_few_lines_and_a_count(deadline_server: RunningServer) -> None:
    """Plain HTTP sent to the MQTT/TLS port, 40 times at once: every failure has the same
    reason, so the log gets its burst (10) plus about one a second, then the count of the rest."""
    server = deadline_server
    start = time.monotonic()
    for _ in range(40):
        with socket.create_connection((server.address, 8883), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _closed_within(sock, 5)
    elapsed = time.monotonic() - start
    summary = _wait_for_log(server, r"(\d+) more TLS handshake failures \(([^)]*)\) not logged, the last from 127\.")
    assert summary is not None, server.log()[-3000:]
    reason = re.escape(summary.group(2))
    # Every failure is either a line or counted in a summary; the last summary may still be
    # waiting for its token.
    deadline = time.monotonic() + 10
    while True:
        log = server.log()
        lines = len(re.findall(rf"TLS handshake with \S+ failed: {reason}\n", log))
        held_back = sum(int(n) for n in re.findall(rf"(\d+) more TLS handshake failures \({reason}\)", log))
        if lines + held_back >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines + held_back == 40, (lines, held_back)
    assert 10 <= lines <= 10 + elapsed + 2, (lines, elapsed)
