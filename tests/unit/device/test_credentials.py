"""The device client's TLS behaviour against a real loopback TLS server (stdlib ssl).

azure-iot-device 2.14.0 speaks exactly TLS 1.2 and closes the socket right after MQTT
DISCONNECT; our client (the simulator's devices, the benchmarks' load) must cost the service
the same, so it must not drift to TLS 1.3 nor add a close_notify exchange.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from iotdps.device.credentials import SymmetricKey, tls_context
from iotdps.device.mqtt import open_mqtt
from iotdps.pki import create_server_identity
from iotdps.protocols.mqtt.codec import Decoder, encode
from iotdps.protocols.mqtt.packets import ConnAck, Connect, Disconnect
from iotdps.secret import Secret


def _server_files(directory: Path) -> tuple[str, Path, Path]:
    """The server CA's PEM, and the files of a server certificate for 127.0.0.1 it signed."""
    identity = create_server_identity((), ("127.0.0.1",))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(identity.certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return identity.ca_certificate.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


async def test_device_context_speaks_tls12_to_a_server_offering_tls13(tmp_path: Path) -> None:
    ca_pem, cert_file, key_file = _server_files(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(cert_file, key_file)
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("ssl_object").version())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        context = tls_context(ca_pem, SymmetricKey(Secret("")))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        client_version = writer.get_extra_info("ssl_object").version()
        await reader.read()  # the server closes after noting its side
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert client_version == "TLSv1.2"
    assert seen == ["TLSv1.2"]


async def test_disconnect_sends_disconnect_then_closes_without_close_notify(tmp_path: Path) -> None:
    ca_pem, cert_file, key_file = _server_files(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[object] = []
    ending: list[str] = []

    def serve() -> None:  # a blocking TLS peer that can tell close_notify from a bare close
        raw, _ = listener.accept()
        # suppress_ragged_eofs=False: a close without close_notify raises SSLEOFError.
        with server_ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as tls:
            decoder = Decoder()
            try:
                while chunk := tls.recv(4096):
                    for packet in decoder.feed(chunk):
                        received.append(packet)
                        if isinstance(packet, Connect):
                            tls.sendall(encode(ConnAck(return_code=0)))
                ending.append("close_notify")
            except ssl.SSLEOFError:
                ending.append("closed without close_notify")

    peer = threading.Thread(target=serve, daemon=True)
    peer.start()
    try:
        client = await open_mqtt("127.0.0.1", port, tls_context(ca_pem, SymmetricKey(Secret(""))))
        client.send_connect("dev-1", "user", None, keepalive=0)
        await client.connected(timeout=5)
        await asyncio.wait_for(client.disconnect(), 1)
        assert not client.is_open
        await asyncio.to_thread(peer.join, 5)
    finally:
        listener.close()
    assert [type(p) for p in received] == [Connect, Disconnect]
    assert ending == ["closed without close_notify"]
