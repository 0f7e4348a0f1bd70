"""The TLS engine seam for every device-facing listener: context, connection, peer identity.

Why pyOpenSSL and not `ssl`: on Python 3.11 `ssl` has no verify callback and no public peer
chain. A device whose CA is unknown or whose certificate has expired would then fail inside the
handshake, and the SDK reports a bare connection failure while operators see nothing. Here the
verify callback records every error and lets the handshake finish; the provisioning core then
refuses the device in protocol terms (MQTT CONNACK 5, HTTP 401) and keeps the reason against its
registration id. pyOpenSSL also drives the OpenSSL bundled in `cryptography`, which measured
1.4-1.8x less CPU per handshake than the system OpenSSL behind `ssl`.

Trust decisions stay with OpenSSL: the trust store holds the anchors (verified CAs and
individually enrolled device certificates) with PARTIAL_CHAIN, so any of them is a trust anchor
by itself, even an intermediate or a non-self-signed leaf. OpenSSL verifies with the TLS client
purpose and its default security level (2: RSA >= 2048, no SHA-1). A chain OpenSSL verified is
never re-verified in Python; the service's chain policy (`iotdps.pki.chain_policy`) adds its
structural rules on the path OpenSSL built (leaf not a CA, key types and curves, signature
algorithms, unknown critical extensions...), no signature work, and a chain that breaks one
counts as unverified. `PeerIdentity.verify_errors` says what OpenSSL, or the policy, disliked.

Everything engine-specific lives in this module and `tls_transport.py`; the rest of iotdps sees
`ServerTls` and the `PeerIdentity` it produces (`iotdps.evidence`) only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from iotdps.errors import PkiError
from iotdps.evidence import VERIFY_WORDS, PeerIdentity, VerifyError
from iotdps.pki.chain_policy import MAX_INTERMEDIATES, PolicyProblem, Rule, leaf_problems, path_problems
from iotdps.pki.encoding import remember_thumbprints
from iotdps.pki.revocation import NO_REVOCATIONS, Revocations
from iotdps.secret import Secret

__all__ = [
    "PRIVATE_BINDINGS",
    "PRIVATE_CLASS_MEMBERS",
    "PRIVATE_CONNECTION_MEMBERS",
    "PRIVATE_CONTEXT_MEMBER",
    "TLS12_CIPHERS",
    "ServerPrivateKey",
    "ServerTls",
    "SniCallback",
    "ciphertext_to_send",
    "ciphertext_unread",
    "describe_verify_error",
    "feed_ciphertext",
    "handshake_step",
    "load_pem_chain",
    "load_pem_key",
    "peer_identity",
    "peercert_dict",
    "plaintext_pending",
    "read_plaintext",
    "take_ciphertext",
    "write_plaintext",
]

log = logging.getLogger(__name__)

# Every private pyOpenSSL name this seam uses, and why it is kept (bench/PROFILE.md, "The TLS
# seam's private pyOpenSSL calls", measured with bench/tls_private.py). pyOpenSSL may change
# any of them in any release: tests/unit/server/test_pyopenssl_private.py checks each one by
# name and by behaviour, so an upgrade that breaks one fails there, naming it, rather than as
# an AttributeError in the middle of a device's handshake.
#
# OpenSSL functions through `OpenSSL._util.lib` (cryptography's binding): the verify callback
# installed with SSL_CTX_set_verify, the memory-BIO and SSL calls of the hot path, and the
# peer chain read as DER.
PRIVATE_BINDINGS: tuple[str, ...] = (
    "X509_verify_cert_error_string",
    "SSL_CTX_set_verify",
    "X509_STORE_CTX_get_current_cert",
    "X509_up_ref",
    "X509_STORE_CTX_get_error",
    "X509_STORE_CTX_get_error_depth",
    "X509_STORE_CTX_get_ex_data",
    "SSL_get_ex_data_X509_STORE_CTX_idx",
    "X509_STORE_CTX_set_error",
    "X509_V_OK",
    "BIO_get_mem_data",
    "BIO_write",
    "BIO_read",
    "SSL_do_handshake",
    "SSL_read",
    "SSL_write",
    "SSL_pending",
    "SSL_get_verify_result",
    "BIO_new",
    "BIO_s_mem",
    "i2d_X509_bio",
    "BIO_free",
    "sk_X509_num",
    "sk_X509_value",
    "SSL_get_peer_certificate",
    "X509_free",
    "SSL_get_peer_cert_chain",
    "SSL_get0_verified_chain",
)
# Private members of pyOpenSSL's classes: (class, attribute).
PRIVATE_CLASS_MEMBERS: tuple[tuple[str, str], ...] = (
    ("Connection", "_reverse_mapping"),  # SSL* -> Connection, for the direct verify callback
    ("Connection", "_raise_ssl_error"),  # pyOpenSSL's own error mapping after a direct call
    ("X509", "_from_raw_x509_ptr"),  # the certificate the verify callback complains about
)
# Instance attributes: of a Connection (its SSL* and memory BIOs) and of a Context (its SSL_CTX*).
PRIVATE_CONNECTION_MEMBERS: tuple[str, ...] = ("_ssl", "_into_ssl", "_from_ssl")
PRIVATE_CONTEXT_MEMBER = "_context"

ServerPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey

# Called with the SNI host name (or None) during the ClientHello. It may return another context
# for this connection (say, a different server certificate per host name) or None to keep ours.
SniCallback = Callable[[str | None], "SSL.Context | None"]

# TLS 1.2 suites: ECDHE only (forward secrecy, no RSA key exchange), AEAD first, then the
# CBC-SHA256/384 suites that Python's default client list still offers and that Azure's own
# endpoints accept with TLS 1.2 enforced. Server preference decides, so AEAD wins when offered.
TLS12_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
)

# Deep enough for root -> several intermediates -> leaf; bounds the work a hostile chain causes.
# OpenSSL's depth counts intermediates; two more than the chain policy allows, so that a chain
# a little too long is refused by the policy, in its words.
_VERIFY_DEPTH = MAX_INTERMEDIATES + 2


def _openssl_text(code: int) -> str:
    """OpenSSL's own short text for a verify error number."""
    # pyOpenSSL has no public wrapper for this; the binding is the one cryptography ships.
    raw = _lib.X509_verify_cert_error_string(code)
    return _ffi.string(raw).decode("ascii", "replace") if raw != _ffi.NULL else f"error {code}"


def describe_verify_error(code: int) -> str:
    """Plain words for an OpenSSL certificate-verification error, for operators."""
    words = VERIFY_WORDS.get(code)
    if words is not None:
        return words
    return f"certificate verification failed: {_openssl_text(code)}"


class _HandshakeRecord:
    """Per-connection scratch space the verify callback writes into (the Connection's app data),
    and the anchors and revocations in force when the connection started."""

    __slots__ = ("anchors", "errors", "revoked")

    def __init__(
        self, anchors: frozenset[x509.Certificate] = frozenset(), revoked: Revocations = NO_REVOCATIONS
    ) -> None:
        self.errors: list[VerifyError] = []
        self.anchors = anchors
        self.revoked = revoked


def _record_and_accept(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    """The verify callback: note every complaint, never fail the handshake.

    Returning True tells OpenSSL to carry on; the provisioning core decides later, in protocol
    terms, with the reason kept for operators.
    """
    if not ok:
        record = conn.get_app_data()
        if isinstance(record, _HandshakeRecord):
            try:
                c = cert.to_cryptography()
                subject = c.subject.rfc4514_string()
            except Exception:  # an undecodable certificate still gets its error recorded
                c, subject = None, "<unreadable certificate>"
            record.errors.append(
                VerifyError(depth=depth, code=errnum, message=_openssl_text(errnum), subject=subject, certificate=c)
            )
    return True


def _verify_callback(ok: int, store_ctx: Any) -> int:
    """OpenSSL's verify callback, installed directly rather than through pyOpenSSL.

    pyOpenSSL's wrapper builds an X509 object, looks the Connection up and calls back into
    Python for every certificate of every chain, three times per device handshake, although
    only a complaint needs any of that. Here a certificate that verified costs one call that
    returns at once; a complaint goes to `_record_and_accept` with what pyOpenSSL would have
    passed. The error is cleared (as pyOpenSSL does) only once it is recorded: if recording
    failed, OpenSSL's own verdict stays and `peer_identity` reports it."""
    if ok:
        return 1
    try:
        x509_ptr = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
        _lib.X509_up_ref(x509_ptr)
        cert = crypto.X509._from_raw_x509_ptr(x509_ptr)
        errnum = int(_lib.X509_STORE_CTX_get_error(store_ctx))
        depth = int(_lib.X509_STORE_CTX_get_error_depth(store_ctx))
        ssl = _lib.X509_STORE_CTX_get_ex_data(store_ctx, _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
        conn = SSL.Connection._reverse_mapping[ssl]
        _record_and_accept(conn, cert, errnum, depth, ok)
    except Exception:
        log.exception("the TLS verify callback failed; the peer's chain counts as unverified")
        return 1
    _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)
    return 1


# One cffi callback for every context; it must outlive them all, hence module level.
_VERIFY_CALLBACK = _ffi.callback("int (*)(int, X509_STORE_CTX *)", _verify_callback)


def load_pem_chain(path: str | Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError(f"cannot read a PEM certificate chain from {path}: {type(e).__name__}") from None
    return certs


def load_pem_key(path: str | Path, passphrase: Secret[bytes] | None = None) -> ServerPrivateKey:
    try:
        key = serialization.load_pem_private_key(
            Path(path).read_bytes(), password=passphrase.reveal() if passphrase else None
        )
    except (OSError, ValueError, TypeError) as e:
        # Never echo the key or the passphrase; the file name and the error class are enough.
        raise PkiError(f"cannot read the PEM private key in {path}: {type(e).__name__}") from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        raise PkiError(f"unsupported key type for a TLS server in {path}")
    return key


class ServerTls:
    """Server certificate, key and client-trust anchors, and the pyOpenSSL context built from them.

    The context is immutable once built: `update_anchors` and `update_server_certificate` build a
    new one and swap it in, so connections accepted afterwards use it while connections already
    open keep the context they started with. Call these from the event loop thread.
    """

    def __init__(
        self,
        certificate_chain: Sequence[x509.Certificate],
        private_key: ServerPrivateKey,
        *,
        anchors: Iterable[x509.Certificate] = (),
        sni_callback: SniCallback | None = None,
    ) -> None:
        self._sni_callback = sni_callback
        self._chain: tuple[x509.Certificate, ...] = ()
        self._key: ServerPrivateKey | None = None
        self._anchors: tuple[x509.Certificate, ...] = tuple(anchors)
        self._anchor_set = frozenset(self._anchors)
        self._context: SSL.Context | None = None
        self._revoked = NO_REVOCATIONS
        self.update_server_certificate(certificate_chain, private_key)

    @classmethod
    def from_pem_files(
        cls,
        chain_path: str | Path,
        key_path: str | Path,
        *,
        passphrase: Secret[bytes] | None = None,
        anchors: Iterable[x509.Certificate] = (),
        sni_callback: SniCallback | None = None,
    ) -> ServerTls:
        """Server certificate chain (leaf first) and key from PEM files."""
        return cls(
            load_pem_chain(chain_path),
            load_pem_key(key_path, passphrase),
            anchors=anchors,
            sni_callback=sni_callback,
        )

    def __repr__(self) -> str:
        leaf = self._chain[0].subject.rfc4514_string() if self._chain else "?"
        return f"ServerTls(server={leaf!r}, anchors={len(self._anchors)})"

    @property
    def context(self) -> SSL.Context:
        """The context for the next connection accepted."""
        assert self._context is not None
        return self._context

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        return self._anchors

    @property
    def server_chain(self) -> tuple[x509.Certificate, ...]:
        return self._chain

    def update_anchors(self, certs: Iterable[x509.Certificate]) -> None:
        """Replace the client-trust anchors (verified CAs and individually enrolled certificates).

        A newly verified CA or new enrollment is trusted from the next connection on, and a
        removed one is no longer trusted; connections already open are unaffected.
        """
        anchors = tuple(certs)
        self._context = self._build(self._chain, self._key, anchors)
        self._anchors = anchors
        self._anchor_set = frozenset(anchors)

    @property
    def revocations(self) -> Revocations:
        return self._revoked

    def update_revocations(self, revoked: Revocations) -> None:
        """Enforce `revoked` (the service's CRLs) from the next handshake on. OpenSSL does not
        read them (it would want a CRL for every CA of every chain); the chain policy does,
        on the path OpenSSL built. Open connections are the hub's to drop."""
        self._revoked = revoked

    def update_server_certificate(self, chain: Sequence[x509.Certificate], key: ServerPrivateKey) -> None:
        """Rotate the server certificate without a restart (new connections only)."""
        chain = tuple(chain)
        if not chain:
            raise PkiError("the server certificate chain is empty")
        self._context = self._build(chain, key, self._anchors)
        self._chain, self._key = chain, key

    def new_connection(self) -> SSL.Connection:
        """A server-side Connection on memory BIOs, ready for `bio_write` of the first bytes."""
        conn = SSL.Connection(self.context, None)
        conn.set_accept_state()
        conn.set_app_data(_HandshakeRecord(self._anchor_set, self._revoked))
        return conn

    def _build(
        self,
        chain: Sequence[x509.Certificate],
        key: ServerPrivateKey | None,
        anchors: Sequence[x509.Certificate],
    ) -> SSL.Context:
        if key is None:
            raise PkiError("no server private key")
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        # TLS 1.2 is what the Azure SDKs speak (they pin PROTOCOL_TLSv1_2); 1.3 is welcome too.
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_COMPRESSION  # CRIME; and nobody needs it
            # client-initiated renegotiation is a CPU lever for attackers and a path we never need
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_NO_TICKET  # devices don't resume; tickets only cost handshake CPU
            | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        # No server-side session cache either: nothing to resume, nothing to keep in memory.
        # TLS 1.2 (what the SDKs speak) then sends no ticket at all. TLS 1.3 still sends
        # OpenSSL's stateful tickets (a session id, no ticket encryption): pyOpenSSL does not
        # bind SSL_CTX_set_num_tickets, and with the cache off those tickets never resume.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        try:
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
            ctx.use_privatekey(key)
            ctx.check_privatekey()
        except SSL.Error:
            raise PkiError("the server private key does not match the server certificate") from None
        # Ask for a client certificate but do not require one (SAS devices present none), and
        # let the handshake finish whatever OpenSSL thinks of the chain.
        _lib.SSL_CTX_set_verify(ctx._context, SSL.VERIFY_PEER, _VERIFY_CALLBACK)
        ctx.set_verify_depth(_VERIFY_DEPTH)
        store = ctx.get_cert_store()
        assert store is not None
        for anchor in anchors:
            try:
                store.add_cert(crypto.X509.from_cryptography(anchor))
            except crypto.Error:
                # Duplicate anchors are harmless; OpenSSL 1.1.1+ ignores them silently anyway.
                log.debug("anchor %s not added", anchor.subject.rfc4514_string())
        # Any anchor is trusted by itself: a verified CA that is an intermediate, or an
        # individually enrolled leaf, needs no path up to a self-signed root.
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        if self._sni_callback is not None:
            ctx.set_tlsext_servername_callback(self._on_sni)
        # Last: pyOpenSSL 25.1 and 25.2 check a cipher list on a throwaway Connection, which marks
        # the context used, and every later setter then warns (DeprecationWarning: "Attempting
        # to mutate a Context after a Connection was created"; from 26.2 that is a ValueError).
        ctx.set_cipher_list(":".join(TLS12_CIPHERS).encode("ascii"))
        return ctx

    def _on_sni(self, conn: SSL.Connection) -> None:
        assert self._sni_callback is not None
        raw = conn.get_servername()
        other = self._sni_callback(raw.decode("ascii", "replace") if raw else None)
        if other is not None:
            conn.set_context(other)


# Bytes waiting in a memory-BIO Connection's two BIOs. Asking first spares the exception
# pyOpenSSL raises for every read of an empty BIO, several per connection. pyOpenSSL has no
# public accessor for the BIOs.


def ciphertext_unread(conn: SSL.Connection) -> int:
    """Ciphertext handed to OpenSSL (bio_write) that it has not processed yet."""
    return int(_lib.BIO_get_mem_data(conn._into_ssl, _ffi.NULL))


def ciphertext_to_send(conn: SSL.Connection) -> int:
    """Ciphertext OpenSSL has produced for the peer (to bio_read)."""
    return int(_lib.BIO_get_mem_data(conn._from_ssl, _ffi.NULL))


# The TLS seam's calls into a memory-BIO Connection, made on OpenSSL directly. pyOpenSSL's
# methods of the same names check their arguments, convert buffers and ask OpenSSL for an
# error after every call; fifteen of them per device connection added up (bench/PROFILE.md).
# A call that fails goes to pyOpenSSL's own error mapping, so failures raise exactly what the
# pyOpenSSL method would (WantReadError, ZeroReturnError, SSL.Error...).
_NO_ZERO_ALLOC = _ffi.new_allocator(should_clear_after_alloc=False)


def feed_ciphertext(conn: SSL.Connection, data: bytes) -> None:
    """Hand bytes from the socket to OpenSSL (Connection.bio_write)."""
    if data and _lib.BIO_write(conn._into_ssl, data, len(data)) <= 0:
        conn.bio_write(data)  # raises what pyOpenSSL raises for it


def take_ciphertext(conn: SSL.Connection, size: int) -> bytes:
    """Up to `size` bytes OpenSSL produced for the peer (Connection.bio_read); b"" if none."""
    buf = _NO_ZERO_ALLOC("char[]", size)
    got = _lib.BIO_read(conn._from_ssl, buf, size)
    return _ffi.buffer(buf, got)[:] if got > 0 else b""


def handshake_step(conn: SSL.Connection) -> None:
    """Connection.do_handshake: returns when done, raises WantReadError while it needs input."""
    result = _lib.SSL_do_handshake(conn._ssl)
    if result <= 0:
        conn._raise_ssl_error(conn._ssl, result)


def read_plaintext(conn: SSL.Connection, size: int) -> bytes:
    """Connection.recv: up to `size` bytes of plaintext."""
    buf = _NO_ZERO_ALLOC("char[]", size)
    result = _lib.SSL_read(conn._ssl, buf, size)
    if result <= 0:
        conn._raise_ssl_error(conn._ssl, result)
    data: bytes = _ffi.buffer(buf, result)[:]
    return data


def write_plaintext(conn: SSL.Connection, data: bytes | memoryview) -> int:
    """Connection.send: how many bytes of `data` OpenSSL took (all of it, with memory BIOs)."""
    with _ffi.from_buffer(data) as view:
        result = _lib.SSL_write(conn._ssl, view, len(view))
    if result <= 0:
        conn._raise_ssl_error(conn._ssl, result)
    return int(result)


def plaintext_pending(conn: SSL.Connection) -> int:
    """Connection.pending: decrypted bytes OpenSSL holds that a read would return at once."""
    return int(_lib.SSL_pending(conn._ssl))


def _verify_result(conn: SSL.Connection) -> int:
    """OpenSSL's final verify result for this connection (0 = ok)."""
    return int(_lib.SSL_get_verify_result(conn._ssl))


def _der_of(x509_ptr: Any) -> bytes:
    """The DER encoding of an OpenSSL X509 (OpenSSL keeps it from parsing: a copy, no encoding)."""
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new")
    try:
        if _lib.i2d_X509_bio(bio, x509_ptr) != 1:
            raise PkiError("cannot encode a peer certificate")
        data = _ffi.new("char **")
        size = _lib.BIO_get_mem_data(bio, data)
        return bytes(_ffi.buffer(data[0], size))
    finally:
        _lib.BIO_free(bio)


# The CAs above device leaves, by DER: every device of a production line presents the same
# ones, so each is parsed once, and the X.509 mechanism's caches meet the same objects again.
_SHARED_CERTS: dict[bytes, x509.Certificate] = {}
_SHARED_CERTS_MAX = 1024


def _certificate(der: bytes, *, shared: bool) -> x509.Certificate:
    if shared:
        found = _SHARED_CERTS.get(der)
        if found is not None:
            return found
    cert = x509.load_der_x509_certificate(der)
    remember_thumbprints(cert, der)
    if shared:
        if len(_SHARED_CERTS) >= _SHARED_CERTS_MAX:
            _SHARED_CERTS.clear()
        _SHARED_CERTS[der] = cert
    return cert


def _stack(stack: Any) -> list[Any]:
    if stack == _ffi.NULL:
        return []
    return [_lib.sk_X509_value(stack, i) for i in range(_lib.sk_X509_num(stack))]


def peer_identity(conn: SSL.Connection) -> PeerIdentity:
    """Read the peer's identity from a server-side Connection whose handshake has finished.

    Certificates are read as DER straight from OpenSSL (pyOpenSSL's conversion wraps each in
    an X509 object and dumps it through a BIO of its own first), each X509 of the connection
    once, and the CAs above the leaf come from a cache keyed by their DER."""
    ssl = conn._ssl  # pyOpenSSL exposes no DER access to the peer chain
    chain: list[x509.Certificate] = []
    seen: dict[Any, x509.Certificate] = {}  # OpenSSL X509 pointer -> certificate, this connection
    leaf: x509.Certificate | None = None
    leaf_ptr = _lib.SSL_get_peer_certificate(ssl)  # a reference of our own: released below
    if leaf_ptr != _ffi.NULL:
        try:
            leaf = _certificate(_der_of(leaf_ptr), shared=False)
            seen[leaf_ptr] = leaf
        finally:
            _lib.X509_free(leaf_ptr)  # the session holds its own reference: the pointer stays valid
        # On the server side OpenSSL's peer chain excludes the leaf; put it first.
        chain.append(leaf)
        for ptr in _stack(_lib.SSL_get_peer_cert_chain(ssl)):
            if ptr not in seen:
                seen[ptr] = _certificate(_der_of(ptr), shared=True)
                chain.append(seen[ptr])
    record = conn.get_app_data()
    errors = list(record.errors) if isinstance(record, _HandshakeRecord) else []
    if leaf is not None and not errors:
        # Belt and braces: if OpenSSL's verdict is not OK but the callback saw nothing (it
        # should not happen), keep OpenSSL's verdict rather than report a clean chain.
        code = _verify_result(conn)
        if code != 0:
            errors.append(VerifyError(0, code, _openssl_text(code), leaf.subject.rfc4514_string(), leaf))
    verified: tuple[x509.Certificate, ...] | None = None
    if leaf is not None and not errors:
        built = [
            seen[ptr] if ptr in seen else _certificate(_der_of(ptr), shared=True)
            for ptr in _stack(_lib.SSL_get0_verified_chain(ssl))
        ]
        verified = tuple(built) if built else None
        if (
            verified is not None
            and len(verified) > 1
            and isinstance(record, _HandshakeRecord)
            and leaf in record.anchors
        ):
            # OpenSSL's last resort with PARTIAL_CHAIN: no issuer was trusted, but the leaf itself
            # is (an individual enrollment); its verified chain then still lists the untrusted
            # CAs the device sent. The leaf is the anchor that vouched: nothing above it counts.
            verified = verified[:1]
    if leaf is not None:
        # The chain policy on the path OpenSSL built (its CAs' verdicts are memoised), or on the
        # leaf alone when there is no such path: the hub's thumbprint devices need no chain, but
        # their certificate still meets the policy's leaf rules.
        revoked = record.revoked if isinstance(record, _HandshakeRecord) else NO_REVOCATIONS
        if verified is not None:
            problems = path_problems(verified, revoked=revoked)
        else:
            # No verified path (a hub thumbprint device, or a chain OpenSSL refused): what the
            # device sent is still checked against the CRLs, so a revoked line cannot get in
            # at the hub by sending a chain nobody verifies.
            problems = [PolicyProblem(d, Rule.REVOKED, c, w) for d, c, w in revoked.presented_problems(chain)]
            problems += leaf_problems(leaf)
        if problems:
            verified = None
            errors += [
                VerifyError(
                    p.depth, int(p.rule), p.describe(), p.certificate.subject.rfc4514_string(), p.certificate, True
                )
                for p in problems
            ]
    sni = conn.get_servername()
    return PeerIdentity(
        chain=tuple(chain),
        verified_chain=verified,
        verify_errors=tuple(errors),
        server_name=sni.decode("ascii", "replace") if sni else None,
        tls_version=conn.get_protocol_version_name(),
        cipher=conn.get_cipher_name() or "",
    )


def _peercert_name(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    out = []
    for rdn in name.rdns:
        out.append(tuple((_SSL_ATTR_NAMES.get(a.oid.dotted_string, a.oid.dotted_string), str(a.value)) for a in rdn))
    return tuple(out)


_SSL_ATTR_NAMES = {
    "2.5.4.3": "commonName",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "2.5.4.5": "serialNumber",
    "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.25": "domainComponent",
}


def peercert_dict(cert: x509.Certificate) -> dict[str, Any]:
    """The shape `ssl.SSLSocket.getpeercert()` returns, for code written against `ssl`."""
    d: dict[str, Any] = {
        "subject": _peercert_name(cert.subject),
        "issuer": _peercert_name(cert.issuer),
        "version": cert.version.value + 1,
        "serialNumber": f"{cert.serial_number:X}",
        "notBefore": cert.not_valid_before_utc.strftime("%b %d %H:%M:%S %Y GMT"),
        "notAfter": cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT"),
    }
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return d
    alt: list[tuple[str, str]] = []
    for g in san:
        if isinstance(g, x509.DNSName):
            alt.append(("DNS", g.value))
        elif isinstance(g, x509.IPAddress):
            alt.append(("IP Address", str(g.value)))
        elif isinstance(g, x509.UniformResourceIdentifier):
            alt.append(("URI", g.value))
        elif isinstance(g, x509.RFC822Name):
            alt.append(("email", g.value))
    d["subjectAltName"] = tuple(alt)
    return d
