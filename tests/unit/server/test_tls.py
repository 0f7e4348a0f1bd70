"""The TLS seam with real sockets on loopback and stdlib `ssl` clients configured like the Azure SDK."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from iotdps.errors import PkiError
from iotdps.evidence import PeerIdentity, VerifyCode
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.server.tls import ServerTls, describe_verify_error, peercert_dict

from .conftest import EchoServer, Pki, ping, start_echo


def cn(peer: PeerIdentity) -> str:
    assert peer.leaf is not None
    return str(peer.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def test_azure_sdk_style_client_verified_chain(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(pki.dev1)) == b"ping"
    (peer,) = echo.seen
    assert peer.ok and peer.verify_errors == ()
    assert cn(peer) == "dev-1"
    assert peer.chain == (pki.dev1.cert, pki.intermediate)
    assert peer.verified_chain == (pki.dev1.cert, pki.intermediate, pki.root)
    assert peer.tls_version == "TLSv1.2"
    assert peer.cipher.startswith("ECDHE-ECDSA-") and "GCM" in peer.cipher
    assert peer.server_name == "localhost"  # SNI for DNS names
    assert peer.explain() == "the certificate chain verified"


async def test_peer_chains_share_their_cas_and_know_their_thumbprints(pki: Pki, echo: EchoServer) -> None:
    for _ in range(2):
        assert await ping(echo.port, pki.client_ctx(pki.dev1)) == b"ping"
    first, second = echo.seen
    assert first.chain == second.chain == (pki.dev1.cert, pki.intermediate)
    # The CAs above the leaf are parsed once and shared; the verified chain reuses the
    # connection's own objects rather than parsing them again.
    assert second.chain[1] is first.chain[1]
    assert first.verified_chain is not None and second.verified_chain is not None
    assert first.verified_chain[0] is first.chain[0] and first.verified_chain[1] is first.chain[1]
    assert second.verified_chain[2] is first.verified_chain[2]
    for cert in (*second.verified_chain, first.chain[0]):
        assert sha1_thumbprint(cert) == cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - a thumbprint
        assert sha256_thumbprint(cert) == cert.fingerprint(hashes.SHA256()).hex().upper()


async def test_ip_literal_sends_no_sni(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(pki.dev1), host="127.0.0.1") == b"ping"
    assert echo.seen[0].server_name is None and echo.seen[0].ok


async def test_intermediate_alone_is_an_anchor(pki: Pki) -> None:
    server, info = await start_echo(pki.server_tls(anchors=(pki.intermediate,)))
    try:
        await ping(info.port, pki.client_ctx(pki.dev1))
    finally:
        server.close()
    (peer,) = info.seen
    assert peer.ok
    assert peer.verified_chain == (pki.dev1.cert, pki.intermediate)


async def test_unknown_ca_completes_handshake_with_error(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(pki.unknown)) == b"ping"
    (peer,) = echo.seen
    assert not peer.ok and peer.verified_chain is None
    assert cn(peer) == "dev-unknown"
    codes = {e.code for e in peer.verify_errors}
    assert VerifyCode.UNABLE_TO_GET_ISSUER_CERT_LOCALLY in codes
    first = peer.verify_errors[0]
    assert first.depth == 0 and first.subject == "CN=dev-unknown" and first.certificate == pki.unknown.cert
    assert "issuer" in first.message  # OpenSSL's own words
    assert "not a known or verified CA" in first.reason
    assert "dev-unknown" in peer.explain()


async def test_expired_device_cert(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(pki.expired)) == b"ping"
    (peer,) = echo.seen
    assert not peer.ok
    assert [e.code for e in peer.verify_errors] == [VerifyCode.CERT_HAS_EXPIRED]
    assert peer.verify_errors[0].reason == "the certificate has expired"


async def test_no_client_cert(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(None)) == b"ping"
    (peer,) = echo.seen
    assert peer.chain == () and peer.leaf is None and not peer.ok and peer.verified_chain is None
    assert peer.explain() == "the device presented no client certificate"


async def test_tls13_client(pki: Pki, echo: EchoServer) -> None:
    assert await ping(echo.port, pki.client_ctx(pki.dev1, tls13=True)) == b"ping"
    (peer,) = echo.seen
    assert peer.tls_version == "TLSv1.3" and peer.ok
    assert peer.verified_chain is not None and peer.verified_chain[-1] == pki.root


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
async def test_no_session_resumption(pki: Pki, echo: EchoServer, tls13: bool) -> None:
    """Devices don't resume: TLS 1.2 gets no ticket, and no session can be resumed in 1.2 or 1.3."""
    ctx = pki.client_ctx(pki.dev1, tls13=tls13)

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        with (
            socket.create_connection(("127.0.0.1", echo.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s,
        ):
            s.sendall(b"x")
            assert s.recv(1) == b"x"  # by now any post-handshake ticket has arrived
            return s.session, s.session_reused

    first, _ = await asyncio.to_thread(connect, None)
    assert first is not None
    if not tls13:
        assert not first.has_ticket  # OP_NO_TICKET: no NewSessionTicket in TLS 1.2
    # TLS 1.3: OpenSSL still sends a stateful ticket (pyOpenSSL cannot set num_tickets = 0), but
    # with the server session cache off it names nothing, so resumption always falls back.
    _, reused = await asyncio.to_thread(connect, first)
    assert reused is False
    assert len(echo.seen) == 2 and all(p.ok for p in echo.seen)


async def test_tls11_client_refused(pki: Pki, echo: EchoServer) -> None:
    # pyOpenSSL as the client: it can still offer TLS 1.1 at security level 0, so the refusal we
    # see is the server's (a protocol_version alert), not a client-side "no protocols".
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_1_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")

    def attempt() -> str:
        with socket.create_connection(("127.0.0.1", echo.port), timeout=5) as s:
            s.settimeout(None)  # blocking: the server answers with an alert and closes
            c = SSL.Connection(ctx, s)
            c.set_connect_state()
            try:
                c.do_handshake()
            except SSL.Error as e:
                return repr(e)
            return "handshake succeeded"

    err = await asyncio.to_thread(attempt)
    assert "handshake succeeded" not in err
    assert "protocol version" in err or "unsupported protocol" in err, err
    assert echo.seen == []


async def test_rsa_server_certificate(pki: Pki) -> None:
    server, info = await start_echo(pki.server_tls(rsa_cert=True))
    try:
        await ping(info.port, pki.client_ctx(pki.dev1))
    finally:
        server.close()
    (peer,) = info.seen
    assert peer.cipher == "ECDHE-RSA-AES256-GCM-SHA384"  # what the SDK negotiates with Azure
    assert peer.ok


async def test_selfsigned_leaf_and_anchor_updates_at_runtime(pki: Pki, echo: EchoServer) -> None:
    tls = echo.tls
    dev = pki.selfsigned
    await ping(echo.port, pki.client_ctx(dev))
    assert [e.code for e in echo.seen[-1].verify_errors] == [VerifyCode.DEPTH_ZERO_SELF_SIGNED_CERT]
    assert "self-signed" in echo.seen[-1].explain()

    # A new individual enrollment: trusted from the next connection, no restart.
    tls.update_anchors([pki.root, dev.cert])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", echo.port, ssl=pki.client_ctx(dev), server_hostname="localhost"
    )
    writer.write(b"1")
    assert await reader.readexactly(1) == b"1"
    assert echo.seen[-1].ok and echo.seen[-1].verified_chain == (dev.cert,)

    # Enrollment deleted: the next connection is not trusted any more...
    tls.update_anchors([pki.root])
    await ping(echo.port, pki.client_ctx(dev))
    assert not echo.seen[-1].ok
    assert echo.seen[-1].verify_errors[0].code == VerifyCode.DEPTH_ZERO_SELF_SIGNED_CERT
    # ...while the connection opened before the update keeps working, with its identity.
    writer.write(b"still here")
    assert await reader.readexactly(10) == b"still here"
    assert echo.seen[1].ok
    writer.close()
    await writer.wait_closed()


async def test_server_certificate_rotation(pki: Pki, echo: EchoServer) -> None:
    ctx = pki.client_ctx(pki.dev1)
    reader, writer = await asyncio.open_connection("127.0.0.1", echo.port, ssl=ctx, server_hostname="localhost")
    first = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    echo.tls.update_server_certificate(pki.rsa_server_chain, pki.rsa_server_key)
    _, w2 = await asyncio.open_connection("127.0.0.1", echo.port, ssl=ctx, server_hostname="localhost")
    second = w2.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert first != second
    assert second == pki.rsa_server_chain[0].public_bytes(Encoding.DER)
    writer.write(b"old")
    assert await reader.readexactly(3) == b"old"
    for w in (writer, w2):
        w.close()
        await w.wait_closed()


def test_mismatched_server_key_is_refused(pki: Pki) -> None:
    with pytest.raises(PkiError, match="does not match"):
        ServerTls(pki.server_chain, pki.dev1.key)
    with pytest.raises(PkiError, match="empty"):
        ServerTls([], pki.server_key)


def test_from_pem_files_and_bad_files(pki: Pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import key_pem, pem

    (tmp_path / "c.pem").write_bytes(pem(*pki.server_chain))
    (tmp_path / "k.pem").write_bytes(key_pem(pki.server_key))
    tls = ServerTls.from_pem_files(tmp_path / "c.pem", tmp_path / "k.pem", anchors=[pki.root])
    assert tls.server_chain == tuple(pki.server_chain) and tls.anchors == (pki.root,)
    assert "anchors=1" in repr(tls)
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(PkiError) as ei:
        ServerTls.from_pem_files(tmp_path / "c.pem", tmp_path / "bad.pem")
    assert "not base64" not in str(ei.value)


def test_context_policy(pki: Pki) -> None:
    ctx = pki.server_tls().context
    conn = SSL.Connection(ctx, None)
    ciphers = conn.get_cipher_list()
    tls12 = [c for c in ciphers if not c.startswith("TLS_")]
    assert tls12 and all(c.startswith("ECDHE-") for c in tls12)
    assert "ECDHE-RSA-AES128-SHA256" in tls12 and "ECDHE-ECDSA-CHACHA20-POLY1305" in tls12
    assert not any(c.endswith("-SHA") for c in tls12)  # no SHA-1 CBC suites
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER  # requested, not required
    assert ctx.get_session_cache_mode() == SSL.SESS_CACHE_OFF


def test_describe_verify_error_numbers_match_openssl() -> None:
    from OpenSSL._util import lib

    from iotdps.server.tls import _openssl_text

    for code in VerifyCode:
        bound = getattr(lib, f"X509_V_ERR_{code.name}", None)
        if bound is not None:
            assert bound == code.value, code
        else:  # not in the binding: check OpenSSL's text for the number instead
            assert "too weak" in _openssl_text(code.value), code
    assert describe_verify_error(VerifyCode.CERT_NOT_YET_VALID).startswith("the certificate is not valid yet")
    assert describe_verify_error(12345).startswith("certificate verification failed")


def test_peercert_dict_shape(pki: Pki) -> None:
    d = peercert_dict(pki.server_chain[0])
    assert d["subject"] == ((("commonName", "localhost"),),)
    assert ("DNS", "localhost") in d["subjectAltName"] and ("IP Address", "127.0.0.1") in d["subjectAltName"]
    assert d["notAfter"].endswith(" GMT") and d["version"] == 3


async def test_transport_extra_info(pki: Pki) -> None:
    got: dict[str, object] = {}

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            for k in ("peername", "sockname", "socket", "sslcontext", "peercert", "ssl_object", "cipher"):
                got[k] = transport.get_extra_info(k)
            got["can_write_eof"] = transport.can_write_eof()
            got["protocol"] = transport.get_protocol() is self
            transport.write(b"k")

    from iotdps.server.listen import start_tls_server

    server = await start_tls_server("127.0.0.1", 0, pki.server_tls(), Probe)
    port = server.sockets[0].getsockname()[1]
    try:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=pki.client_ctx(pki.dev1), server_hostname="localhost"
        )
        assert await r.readexactly(1) == b"k"
        w.close()
        await w.wait_closed()
    finally:
        server.close()
    assert got["sockname"] == ("127.0.0.1", port)
    assert isinstance(got["socket"], socket.socket | object) and got["socket"] is not None
    assert got["sslcontext"] is not None and got["ssl_object"] is None
    assert got["peercert"]["subject"] == ((("commonName", "dev-1"),),)  # type: ignore[index]
    assert got["can_write_eof"] is False and got["protocol"] is True
    assert got["cipher"][1] == "TLSv1.2"  # type: ignore[index]
