"""The chain policy's two halves agree: the TLS seam (OpenSSL, then `path_problems` on its path)
and `verify_client_chain` (cryptography's verifier under the same rules), on the corner cases
the e2e table (tests/attack/test_x509_chains.py) does not reach over a socket.

The handshake runs in memory: our ServerTls on one side, a pyOpenSSL client (the OpenSSL 4
inside cryptography, security level 0 so it can present anything) on the other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from OpenSSL import SSL

from iotdps.evidence import PeerIdentity
from iotdps.pki import create_server_identity
from iotdps.pki.chain_policy import Rule, leaf_problems, path_problems, verify_client_chain
from iotdps.server.tls import ServerTls, peer_identity
from iotdps_testing.x509craft import Cert, ku, make, new_key, weak_signed

NOW = dt.datetime.now(dt.UTC)
MAX_PLUS = 10  # intermediates in the longest chain
_SERVER = create_server_identity(("localhost",), ("127.0.0.1",))


def handshake(anchors: list[x509.Certificate], chain: list[Cert]) -> PeerIdentity:
    """A full handshake through memory BIOs; the server side's PeerIdentity."""
    tls = ServerTls([_SERVER.certificate, _SERVER.ca_certificate], _SERVER.key, anchors=anchors)  # type: ignore[arg-type]
    server = tls.new_connection()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.use_certificate(chain[0].cert)
    for extra in chain[1:]:
        context.add_extra_chain_cert(extra.cert)
    context.use_privatekey(chain[0].key)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    done = False
    for _ in range(10):  # bounded: a handshake takes two or three round trips
        done = True
        for side, other in ((client, server), (server, client)):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                done = False
            try:
                other.bio_write(side.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if done:
            break
    assert done, "the handshake did not finish"
    return peer_identity(server)


@dataclass(frozen=True)
class Case:
    anchors: list[Cert]
    chain: list[Cert]
    admit: bool
    rule: Rule | None = None  # the policy rule a refusal must name, when it is the policy's


def _cases() -> dict[str, Case]:
    root = make("root", None, ca=True)
    line = make("line", root, ca=True)
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    policies = x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier("2.5.29.32.0"), None)])
    any_eku_line = make("any-eku-line", root, ca=True, eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
    client_eku_line = make("client-eku-line", root, ca=True, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    bare_root = make("bare-root", None, ca=True, key_usage=None)
    line_of_bare = make("line-of-bare-root", bare_root, ca=True)
    bare_line = make("bare-line", root, ca=True, key_usage=None)
    expired_root = make(
        "expired-root", None, ca=True, not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
    )
    under_expired = make("line-under-expired", expired_root, ca=True)
    rsa_root = make("rsa-root", None, ca=True, key=new_key("rsa2048"))
    sha1_root = weak_signed(rsa_root, rsa_root.key)
    weak_self = make("weak-self-signed", None, key=new_key("rsa1024"))
    rsa_self = make("rsa-self-signed", None, key=new_key("rsa2048"))
    sha1_self = weak_signed(rsa_self, rsa_self.key)
    self_signed_ca = make("self-signed-ca", None, ca=True)
    deep, chain = root, []
    for i in range(MAX_PLUS):
        deep = make(f"deep-{i}", deep, ca=True)
        chain.insert(0, deep)
    ok, long_chain = chain[-8:], chain

    def dev(cn: str, issuer: Cert = line, **kw: object) -> Cert:
        return make(cn, issuer, **kw)  # type: ignore[arg-type]

    return {
        "brainpool leaf": Case([root], [dev("bp", key=new_key("brainpool")), line], False, Rule.KEY),
        "ed25519 leaf": Case([root], [dev("ed", key=new_key("ed25519")), line], False, Rule.KEY),
        "p521 leaf": Case([root], [dev("p521", key=new_key("p521")), line], False, Rule.KEY),
        "anyEKU alone on a CA": Case([root], [dev("under-any", any_eku_line), any_eku_line], False),
        "clientAuth on a CA": Case([root], [dev("under-client", client_eku_line), client_eku_line], True),
        "critical EKU on the leaf": Case(
            [root],
            [dev("crit-eku", eku=None, extra=[(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), True)]), line],
            True,
        ),
        "critical certificatePolicies": Case(
            [root], [dev("pol", extra=[(policies, True)]), line], False, Rule.CRITICAL_EXTENSION
        ),
        "non-critical unknown extension": Case([root], [dev("noncrit", extra=[(unknown, False)]), line], True),
        "keyCertSign on a non-CA leaf": Case(
            [root], [dev("kcs", key_usage=ku(digital_signature=True, cert_sign=True)), line], False
        ),
        "keyEncipherment-only leaf": Case([root], [dev("kenc", key_usage=ku(key_encipherment=True)), line], False),
        "leaf without key usage": Case([root], [dev("no-ku", key_usage=None), line], True),
        "anchor root without key usage": Case([bare_root], [dev("under-bare-root", line_of_bare), line_of_bare], True),
        "CA without key usage below the anchor": Case(
            [root], [dev("under-bare", bare_line), bare_line], False, Rule.NO_CERT_SIGN
        ),
        "expired root anchor": Case([expired_root], [dev("under-expired", under_expired), under_expired], False),
        "SHA-1 self-signature of a root anchor": Case([sha1_root], [make("under-sha1-root", sha1_root)], True),
        "self-signed RSA-1024 enrollment": Case([weak_self], [weak_self], False, Rule.KEY),
        "self-signed enrollment signed with SHA-1": Case([sha1_self], [sha1_self], True),
        "self-signed CA:TRUE enrollment": Case([self_signed_ca], [self_signed_ca], False),
        "RSASSA-PSS, salt = digest size": Case([rsa_root], [make("pss32", rsa_root, pss_salt=32)], True),
        "RSASSA-PSS, salt 20": Case([rsa_root], [make("pss20", rsa_root, pss_salt=20)], False),
        "8 intermediates": Case([root], [dev("deep-8", ok[0]), *ok], True),
        "10 intermediates": Case([root], [dev("deep-10", long_chain[0]), *long_chain], False),
    }


NAMES = (
    "brainpool leaf",
    "ed25519 leaf",
    "p521 leaf",
    "anyEKU alone on a CA",
    "clientAuth on a CA",
    "critical EKU on the leaf",
    "critical certificatePolicies",
    "non-critical unknown extension",
    "keyCertSign on a non-CA leaf",
    "keyEncipherment-only leaf",
    "leaf without key usage",
    "anchor root without key usage",
    "CA without key usage below the anchor",
    "expired root anchor",
    "SHA-1 self-signature of a root anchor",
    "self-signed RSA-1024 enrollment",
    "self-signed enrollment signed with SHA-1",
    "self-signed CA:TRUE enrollment",
    "RSASSA-PSS, salt = digest size",
    "RSASSA-PSS, salt 20",
    "8 intermediates",
    "10 intermediates",
)


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    made = _cases()
    assert set(made) == set(NAMES)
    return made


@pytest.mark.parametrize("name", NAMES)
def test_handshake_and_verifier_agree(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    anchors = [a.cert for a in case.anchors]
    chain = [c.cert for c in case.chain]
    peer = handshake(anchors, case.chain)
    verdict = verify_client_chain(chain, anchors, dt.datetime.now(dt.UTC))
    assert peer.ok is case.admit, peer.explain()
    assert verdict.ok is case.admit, verdict.reasons()
    if case.rule is not None:
        # The rule's number is OpenSSL's nearest code: either OpenSSL or the policy raised it.
        assert case.rule in {e.code for e in peer.verify_errors}, peer.explain()
        assert case.rule in {p.rule for p in verdict.problems} or verdict.refusal is not None, verdict.reasons()


def test_leaf_rules_name_the_certificate_and_the_rule() -> None:
    line = make("line", make("root", None, ca=True), ca=True)
    weak = make("weak-device", line, key=new_key("rsa1024"), eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    words = sorted(p.describe() for p in leaf_problems(weak.cert))
    assert words == [
        "CN=weak-device has an RSA-1024 key; at least RSA-2048 is required",
        "wrong extended key usage: CN=weak-device allows serverAuth; a device certificate needs clientAuth",
    ]
    assert isinstance(weak.cert.public_key(), rsa.RSAPublicKey)


def test_path_length_counts_every_intermediate_below_the_ca() -> None:
    root = make("root", None, ca=True, path_length=1)
    a = make("a", root, ca=True)
    b = make("b", a, ca=True)
    device = make("device", b)
    (problem,) = path_problems([device.cert, b.cert, a.cert, root.cert])
    assert problem.rule is Rule.PATH_LENGTH and problem.depth == 3
    assert (
        problem.describe()
        == "path length violated: CN=root allows at most 1 intermediate CA(s) below it, but the chain has 2"
    )
    assert path_problems([device.cert, b.cert, a.cert]) == []  # a as the anchor: no constraint broken


def test_time_is_checked_only_when_asked() -> None:
    root = make("root", None, ca=True)
    old = make("old-device", root, not_after=NOW - dt.timedelta(hours=1))
    assert path_problems([old.cert, root.cert]) == []
    (problem,) = path_problems([old.cert, root.cert], NOW)
    assert problem.rule is Rule.EXPIRED and problem.describe().startswith("CN=old-device expired at ")
