"""What the TLS seam's private pyOpenSSL calls save: the seam vs pyOpenSSL's public API, in-process.

Both sides of each handshake run in this process on memory BIOs (no sockets, no event loop),
so only the server's own calls are timed: the same mutual-TLS 1.2 handshake as the Azure SDK's
(client certificate and its intermediate, ECDSA P-256), one MQTT-sized exchange each way, then
the peer identity the provisioning core needs (leaf, presented chain, verified chain, errors).

- "seam": iotdps.server.tls as shipped (verify callback on OpenSSL directly, BIO and SSL calls
  through `OpenSSL._util.lib`, the peer chain read as DER).
- "public": the same work through pyOpenSSL's public methods only (`set_verify` with a Python
  callback, `bio_write`/`bio_read`/`do_handshake`/`recv`/`send`, read until WantReadError,
  `get_peer_cert_chain(as_cryptography=True)`, `get_verified_chain(as_cryptography=True)`).

Server CPU per handshake is the sum of `time.process_time()` around the server's calls; the
rounds alternate the two variants so drift on a shared machine hits both alike.

    python bench/tls_private.py [-n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iotdps.pki.chain_policy import leaf_problems, path_problems
from iotdps.server import tls as seam
from tls_handshakes import make_pki

_PAYLOAD = b"\x10" * 120  # about an MQTT CONNECT


def _client_context(d: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)  # what the SDK speaks
    chain = x509.load_pem_x509_certificates((d / "device.pem").read_bytes())
    ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    ctx.use_privatekey_file(str(d / "device.key"))
    ctx.load_verify_locations(str(d / "server-ca.pem"))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: True)
    return ctx


class _Public:
    """The server side with public pyOpenSSL calls only."""

    def __init__(self, tls: seam.ServerTls) -> None:
        ctx = seam.ServerTls(tls.server_chain, tls._key, anchors=tls.anchors).context  # type: ignore[arg-type]
        # Replace the seam's direct callback by pyOpenSSL's wrapper, as the public API offers it.
        ctx.set_verify(SSL.VERIFY_PEER, self._record)
        self.ctx = ctx

    @staticmethod
    def _record(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        if not ok:
            conn.get_app_data().append((errnum, depth, cert.to_cryptography()))
        return True

    def new(self) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_accept_state()
        conn.set_app_data([])
        return conn

    def feed(self, conn: SSL.Connection, data: bytes) -> None:
        conn.bio_write(data)

    def take(self, conn: SSL.Connection) -> bytes:
        out = b""
        while True:
            try:
                out += conn.bio_read(65536)
            except SSL.WantReadError:
                return out

    def handshake(self, conn: SSL.Connection) -> bool:
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    def read(self, conn: SSL.Connection) -> bytes:
        out = b""
        while True:
            try:
                out += conn.recv(65536)
            except SSL.WantReadError:
                return out

    def write(self, conn: SSL.Connection, data: bytes) -> None:
        conn.send(data)

    def identity(self, conn: SSL.Connection) -> Any:
        """What `seam.peer_identity` produces, from public calls; the same chain policy after."""
        leaf = conn.get_peer_certificate(as_cryptography=True)
        chain = conn.get_peer_cert_chain(as_cryptography=True)
        errors = list(conn.get_app_data())
        verified = conn.get_verified_chain(as_cryptography=True) if not errors else None
        problems = path_problems(tuple(verified)) if verified else leaf_problems(leaf) if leaf else []
        return leaf, chain, verified, errors, problems


class _Seam:
    def __init__(self, tls: seam.ServerTls) -> None:
        self.tls = tls

    def new(self) -> SSL.Connection:
        return self.tls.new_connection()

    def feed(self, conn: SSL.Connection, data: bytes) -> None:
        seam.feed_ciphertext(conn, data)

    def take(self, conn: SSL.Connection) -> bytes:
        waiting = seam.ciphertext_to_send(conn)
        return seam.take_ciphertext(conn, waiting) if waiting else b""

    def handshake(self, conn: SSL.Connection) -> bool:
        try:
            seam.handshake_step(conn)
        except SSL.WantReadError:
            return False
        return True

    def read(self, conn: SSL.Connection) -> bytes:
        try:
            return seam.read_plaintext(conn, 65536)
        except SSL.WantReadError:
            return b""

    def write(self, conn: SSL.Connection, data: bytes) -> None:
        seam.write_plaintext(conn, data)

    def identity(self, conn: SSL.Connection) -> Any:
        return seam.peer_identity(conn)


def _client_out(client: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += client.bio_read(65536)
        except SSL.WantReadError:
            return out


def _one(server: _Seam | _Public, cctx: SSL.Context, phases: dict[str, float]) -> float:
    """One handshake and exchange; the server's CPU seconds (and per phase into `phases`)."""
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    spent = 0.0
    t = time.process_time
    with_client_done = False
    start = t()
    conn = server.new()
    spent += t() - start
    while True:
        if not with_client_done:
            try:
                client.do_handshake()
                with_client_done = True
            except SSL.WantReadError:
                pass
        data = _client_out(client)
        start = t()
        if data:
            server.feed(conn, data)
        done = server.handshake(conn)
        back = server.take(conn)
        spent += t() - start
        if back:
            client.bio_write(back)
        if done:
            break
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    client.send(_PAYLOAD)
    data = _client_out(client)
    phases["handshake"] += spent
    start = t()
    server.identity(conn)
    mid = t()
    phases["identity"] += mid - start
    spent += mid - start
    start = t()
    server.feed(conn, data)
    got = server.read(conn)
    server.write(conn, got)
    back = server.take(conn)
    phases["exchange"] += t() - start
    spent += t() - start
    client.bio_write(back)
    assert client.recv(65536) == _PAYLOAD
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="handshakes per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_pki(d)
        root = x509.load_pem_x509_certificates((d / "root.pem").read_bytes())
        tls = seam.ServerTls.from_pem_files(d / "server.pem", d / "server.key", anchors=root)
        cctx = _client_context(d)
        variants: dict[str, _Seam | _Public] = {"seam": _Seam(tls), "public": _Public(tls)}
        results: dict[str, list[float]] = {name: [] for name in variants}
        phases = {name: dict.fromkeys(("handshake", "identity", "exchange"), 0.0) for name in variants}
        for name, server in variants.items():  # warm-up: caches, first-call costs
            for _ in range(50):
                _one(server, cctx, dict(phases[name]))
        for _ in range(args.rounds):
            for name, server in variants.items():
                total = sum(_one(server, cctx, phases[name]) for _ in range(args.n))
                results[name].append(total / args.n * 1e6)
    import cryptography
    import OpenSSL

    versions = f"cryptography {cryptography.__version__}, pyOpenSSL {OpenSSL.__version__}"
    print(f"{versions}, {args.n} handshakes x {args.rounds}")
    for name, per in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in per)
        print(f"{name:7s} server CPU per handshake: median {statistics.median(per):7.1f} us  ({rounds})")
    count = args.n * args.rounds
    for name, split in phases.items():
        print(f"{name:7s} " + ", ".join(f"{phase} {v / count * 1e6:.1f} us" for phase, v in split.items()))
    saved = statistics.median(results["public"]) - statistics.median(results["seam"])
    print(f"the private calls save {saved:.1f} us per handshake ({saved / statistics.median(results['public']):.1%})")


if __name__ == "__main__":
    main()
