"""Mutual-TLS handshakes per server CPU second: our pyOpenSSL seam vs stdlib asyncio ssl.

Each server runs alone in a child process; the parent makes N sequential TLS 1.2 handshakes with
a client certificate, exactly like the Azure SDK (PROTOCOL_TLSv1_2, CERT_REQUIRED,
check_hostname), exchanges one byte, and closes. The server's CPU time is read from
/proc/<pid>/stat, so client cost does not count. Same certificates for both.

    python bench/tls_handshakes.py [N]     (default 300)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing as mp
import os
import socket
import ssl
import sys
import tempfile
import time
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_pki(d: Path) -> None:
    rk, ik, sk, dk, ck = (ec.generate_private_key(ec.SECP256R1()) for _ in range(5))
    root = _cert("Bench Root", rk, None, ca=True)
    inter = _cert("Bench Factory", ik, (root, rk), ca=True)
    srv_ca = _cert("Bench Server CA", ck, None, ca=True)
    srv = _cert("localhost", sk, (srv_ca, ck), san=True)
    dev = _cert("dev-1", dk, (inter, ik), client=True)
    (d / "root.pem").write_bytes(_pem(root))
    (d / "server-ca.pem").write_bytes(_pem(srv_ca))
    (d / "server.pem").write_bytes(_pem(srv))
    (d / "server.key").write_bytes(_key_pem(sk))
    (d / "device.pem").write_bytes(_pem(dev, inter))
    (d / "device.key").write_bytes(_key_pem(dk))


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)  # type: ignore[attr-defined]


def serve(kind: str, d: str, port_q: mp.Queue[int]) -> None:
    async def main() -> None:
        p = Path(d)
        if kind == "seam":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
            from iotdps.server.listen import start_tls_server
            from iotdps.server.tls import ServerTls

            root = x509.load_pem_x509_certificate((p / "root.pem").read_bytes())
            tls = ServerTls.from_pem_files(p / "server.pem", p / "server.key", anchors=[root])
            server = await start_tls_server("127.0.0.1", 0, tls, _Echo)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(p / "server.pem", p / "server.key")
            ctx.load_verify_locations(p / "root.pem")
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.num_tickets = 0  # the same "no tickets" policy as the seam
            ctx.options |= ssl.OP_NO_TICKET
            server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0, ssl=ctx)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.sleep(3600)

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, d: Path, n: int) -> float:
    q: mp.Queue[int] = mp.Queue()
    proc = mp.Process(target=serve, args=(kind, str(d), q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        ctx.load_verify_locations(d / "server-ca.pem")
        ctx.load_cert_chain(d / "device.pem", d / "device.key")
        for _ in range(10):  # warm-up
            _one(ctx, port)
        assert proc.pid is not None
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        for _ in range(n):
            _one(ctx, port)
        time.sleep(0.05)  # let the server finish closing the last connection
        cpu = _cpu_seconds(proc.pid) - cpu0
        wall = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.join()
    rate = n / cpu if cpu > 0 else float("inf")
    print(f"{kind:7s} {n} handshakes: server CPU {cpu:.2f}s ({rate:.0f}/CPU-s), wall {wall:.2f}s")
    return rate


def _one(ctx: ssl.SSLContext, port: int) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"x")
        s.recv(1)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_pki(d)
        seam = run("seam", d, n)
        stdlib = run("stdlib", d, n)
    print(f"ratio seam/stdlib (handshakes per server CPU second): {seam / stdlib:.2f}x")


if __name__ == "__main__":
    main()
