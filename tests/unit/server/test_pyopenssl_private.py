"""The TLS seam's private pyOpenSSL calls, one by one: an upgrade that moves one fails HERE.

iotdps.server.tls keeps a few of pyOpenSSL's private names for measured reasons (bench/PROFILE.md,
"The TLS seam's private pyOpenSSL calls"; bench/tls_private.py). pyOpenSSL promises nothing about
them, so each is checked by name against the release installed (CI runs the oldest and the newest
releases pyproject.toml admits), and then by behaviour: a real mutual-TLS handshake on memory
BIOs through the seam's functions, with a chain that verifies and one that does not.
"""

from __future__ import annotations

import OpenSSL
import pytest
from cryptography import x509
from OpenSSL import SSL, crypto

from iotdps.server import tls as seam

from .conftest import Device, Pki

_HOW = (
    "pyOpenSSL {version} changed a private name the TLS seam uses: {what}. See bench/PROFILE.md "
    "('The TLS seam's private pyOpenSSL calls'): replace the call in iotdps/server/tls.py with the "
    "public API (and measure with bench/tls_private.py), or follow the rename."
)


def _fail(what: str) -> str:
    return _HOW.format(version=OpenSSL.__version__, what=what)


@pytest.mark.parametrize("name", seam.PRIVATE_BINDINGS)
def test_openssl_binding_is_there(name: str) -> None:
    from OpenSSL._util import lib

    assert hasattr(lib, name), _fail(f"OpenSSL._util.lib.{name} is gone")


@pytest.mark.parametrize(("owner", "name"), seam.PRIVATE_CLASS_MEMBERS)
def test_class_member_is_there(owner: str, name: str) -> None:
    cls = {"Connection": SSL.Connection, "X509": crypto.X509}[owner]
    assert hasattr(cls, name), _fail(f"{owner}.{name} is gone")


def _pair(pki: Pki, device: Device) -> tuple[SSL.Connection, SSL.Connection]:
    tls = pki.server_tls()
    server = tls.new_connection()
    for name in seam.PRIVATE_CONNECTION_MEMBERS:
        assert hasattr(server, name), _fail(f"Connection.{name} is gone")
    assert hasattr(tls.context, seam.PRIVATE_CONTEXT_MEMBER), _fail(f"Context.{seam.PRIVATE_CONTEXT_MEMBER} is gone")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(device.cert)
    if device is pki.dev1:
        ctx.add_extra_chain_cert(pki.intermediate)
    ctx.use_privatekey(device.key)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    return server, client


def _handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    for _ in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        while True:
            try:
                seam.feed_ciphertext(server, client.bio_read(65536))
            except SSL.WantReadError:
                break
        try:
            seam.handshake_step(server)
            done = True
        except SSL.WantReadError:
            done = False
        waiting = seam.ciphertext_to_send(server)
        if waiting:
            client.bio_write(seam.take_ciphertext(server, waiting))
        if done:
            client.do_handshake()
            return
    raise AssertionError("the handshake did not finish")


def test_the_seam_does_a_verified_handshake_and_exchange(pki: Pki) -> None:
    server, client = _pair(pki, pki.dev1)
    _handshake(server, client)
    peer = seam.peer_identity(server)
    assert peer.ok, _fail(f"a chain that verifies reads as {peer.explain()!r}")
    assert peer.chain == (pki.dev1.cert, pki.intermediate)
    assert peer.verified_chain == (pki.dev1.cert, pki.intermediate, pki.root)
    client.send(b"hello")
    seam.feed_ciphertext(server, client.bio_read(65536))
    assert seam.ciphertext_unread(server) > 0  # the record, not yet decrypted
    assert seam.read_plaintext(server, 100) == b"hello"
    assert seam.ciphertext_unread(server) == 0
    assert seam.plaintext_pending(server) == 0
    assert seam.write_plaintext(server, b"world") == 5
    client.bio_write(seam.take_ciphertext(server, seam.ciphertext_to_send(server)))
    assert client.recv(100) == b"world"
    with pytest.raises(SSL.WantReadError):  # pyOpenSSL's error mapping, reached privately
        seam.read_plaintext(server, 100)


def test_the_direct_verify_callback_records_what_openssl_disliked(pki: Pki) -> None:
    """A device of a CA the server does not trust: the handshake finishes (the callback
    accepts), and the complaint is recorded with OpenSSL's words and the certificate."""
    server, client = _pair(pki, pki.unknown)
    _handshake(server, client)
    peer = seam.peer_identity(server)
    assert not peer.ok and peer.verified_chain is None
    (error, *_rest) = peer.verify_errors
    assert error.code == 20 and "unable to get local issuer certificate" in error.message  # X509_V_ERR_...
    assert isinstance(error.certificate, x509.Certificate)
    assert seam.describe_verify_error(10_000).startswith("certificate verification failed: ")
