"""The device client's TLS context against a real loopback TLS server that offers TLS 1.3.

azure-iot-device 2.14.0 speaks exactly TLS 1.2; our client (the simulator's devices, the
benchmarks' load) must cost the service the same handshake, so it must not drift to 1.3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotdps.device.credentials import SymmetricKey, tls_context
from iotdps.secret import Secret


def _server_files(directory: Path) -> tuple[str, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loopback")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pem.decode(), cert_file, key_file


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
