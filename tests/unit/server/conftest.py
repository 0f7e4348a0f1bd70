"""Certificates for the TLS seam tests, made with `cryptography`, and a tiny echo server."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdps.evidence import PeerIdentity
from iotdps.server.listen import start_tls_server
from iotdps.server.tls import ServerTls
from iotdps.server.tls_transport import PEER_INFO_KEY

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    client: bool = False,
    server_names: tuple[str, ...] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Device:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain_file: Path  # leaf (+ intermediate), as the SDK's X509(cert_file=...) gets it
    key_file: Path


@dataclass
class Pki:
    root: x509.Certificate
    intermediate: x509.Certificate
    server_ca: x509.Certificate
    server_ca_file: Path
    server_chain: list[x509.Certificate]
    server_key: ec.EllipticCurvePrivateKey
    rsa_server_chain: list[x509.Certificate]
    rsa_server_key: rsa.RSAPrivateKey
    dev1: Device  # CN=dev-1, root -> intermediate -> dev-1
    unknown: Device  # issued by a CA we do not know
    expired: Device  # issued by our intermediate, expired yesterday
    selfsigned: Device  # a self-signed device leaf (CA:FALSE), for individual enrollment

    def server_tls(self, *, rsa_cert: bool = False, anchors: tuple[x509.Certificate, ...] | None = None) -> ServerTls:
        chain, key = (self.rsa_server_chain, self.rsa_server_key) if rsa_cert else (self.server_chain, self.server_key)
        return ServerTls(chain, key, anchors=(self.root,) if anchors is None else anchors)

    def client_ctx(self, device: Device | None = None, *, tls13: bool = False) -> ssl.SSLContext:
        """Exactly the Azure IoT SDK's client context (TLS 1.2 pinned), or a TLS 1.3 one."""
        if tls13:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        ctx.load_verify_locations(cadata=pem(self.server_ca).decode())
        if device is not None:
            ctx.load_cert_chain(device.chain_file, device.key_file)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    root_key, int_key, srv_ca_key = ec_key(), ec_key(), ec_key()
    root = make_cert("Test Root CA", root_key, ca=True)
    inter = make_cert("Test Factory CA", int_key, (root, root_key), ca=True)
    server_ca = make_cert("Test Server CA", srv_ca_key, ca=True)
    srv_key = ec_key()
    srv = make_cert("localhost", srv_key, (server_ca, srv_ca_key), server_names=("localhost", "127.0.0.1"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_srv = make_cert("localhost", rsa_key, (server_ca, srv_ca_key), server_names=("localhost", "127.0.0.1"))
    (d / "server-ca.pem").write_bytes(pem(server_ca))

    def device(
        name: str,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        extra: tuple[x509.Certificate, ...] = (),
    ) -> Device:
        cf, kf = d / f"{name}.chain.pem", d / f"{name}.key.pem"
        cf.write_bytes(pem(cert, *extra))
        kf.write_bytes(key_pem(key))
        return Device(cert, key, cf, kf)

    k1 = ec_key()
    dev1 = device("dev-1", make_cert("dev-1", k1, (inter, int_key), client=True), k1, (inter,))
    other_key = ec_key()
    other_ca = make_cert("Somebody Else's CA", other_key, ca=True)
    k2 = ec_key()
    unknown = device("dev-unknown", make_cert("dev-unknown", k2, (other_ca, other_key), client=True), k2)
    k3 = ec_key()
    old = make_cert(
        "dev-old",
        k3,
        (inter, int_key),
        client=True,
        not_before=NOW - dt.timedelta(days=30),
        not_after=NOW - dt.timedelta(days=1),
    )
    expired = device("dev-old", old, k3, (inter,))
    k4 = ec_key()
    selfsigned = device("dev-self", make_cert("dev-self", k4, client=True), k4)
    return Pki(
        root=root,
        intermediate=inter,
        server_ca=server_ca,
        server_ca_file=d / "server-ca.pem",
        server_chain=[srv, server_ca],
        server_key=srv_key,
        rsa_server_chain=[rsa_srv],
        rsa_server_key=rsa_key,
        dev1=dev1,
        unknown=unknown,
        expired=expired,
        selfsigned=selfsigned,
    )


class EchoProtocol(asyncio.Protocol):
    """Records the peer, echoes every byte back."""

    def __init__(self, seen: list[PeerIdentity]) -> None:
        self.seen = seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.seen.append(transport.get_extra_info(PEER_INFO_KEY))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class EchoServer:
    tls: ServerTls
    port: int
    seen: list[PeerIdentity]


async def start_echo(tls: ServerTls, *, handshake_timeout: float = 5.0) -> tuple[asyncio.Server, EchoServer]:
    seen: list[PeerIdentity] = []
    server = await start_tls_server(
        "127.0.0.1", 0, tls, lambda: EchoProtocol(seen), handshake_timeout=handshake_timeout
    )
    return server, EchoServer(tls, server.sockets[0].getsockname()[1], seen)


@pytest.fixture
async def echo(pki: Pki) -> AsyncIterator[EchoServer]:
    server, info = await start_echo(pki.server_tls())
    yield info
    server.close()
    await server.wait_closed()


async def ping(port: int, ctx: ssl.SSLContext, host: str = "localhost", payload: bytes = b"ping") -> bytes:
    """Connect, send, read the echo, close (with close_notify)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host), 5
    )
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (ConnectionError, ssl.SSLError):
            pass
