"""Chain building and the operator's words for every way a chain fails."""

from __future__ import annotations

from datetime import timedelta

from certkit import NOW, issue, seed004

from iotdps.attestation.x509 import build_path, check_leaf, evidence_from_chain, extend_above
from iotdps.pki.encoding import certificate_info, load_certificate, load_certificates
from iotdps.refusals import RefusalReason as R


def test_partial_chain_anchors_root_intermediate_or_leaf() -> None:
    h = seed004()
    chain = h.chain("dev-1")
    assert build_path(chain, [h.root.cert], NOW).chain == (chain[0], h.a.cert, h.root.cert)
    assert build_path(chain, [h.a.cert], NOW).chain == (chain[0], h.a.cert)
    assert build_path([chain[0]], [chain[0]], NOW).chain == (chain[0],)
    # Intermediate not presented but known: filled in.
    assert build_path([chain[0]], [h.root.cert], NOW, known=[h.a.cert]).chain == (chain[0], h.a.cert, h.root.cert)


def test_evidence_from_chain() -> None:
    h = seed004()
    ok = evidence_from_chain(h.chain("dev-4"), [h.root.cert], NOW)
    assert ok.verified is not None and ok.verified[-1] == h.root.cert and ok.errors == ()
    bad = evidence_from_chain(h.chain("dev-4"), [h.a.cert], NOW)
    assert bad.verified is None and "chain stops at intermediate CN=B" in bad.errors[0]


def test_diagnoses() -> None:
    h = seed004()
    dev = h.chain("dev-1")
    uploaded = {h.root.sha256: ("acme-root", False)}
    cases = [
        (build_path(dev, [], NOW), R.CHAIN_UNKNOWN_CA, "chain stops at intermediate CN=A"),
        (build_path(dev[:1], [], NOW), R.CHAIN_UNKNOWN_CA, "its issuer CN=A is not uploaded"),
        (build_path(dev, [], NOW, known=[h.root.cert], uploaded=uploaded), R.CA_NOT_VERIFIED, "CA acme-root"),
        (build_path([h.root.cert], [], NOW), R.CHAIN_UNKNOWN_CA, "self-signed device certificate CN=root"),
        (build_path(dev[:1], [issue("A", ca=True).cert], NOW), R.CHAIN_INVALID, "does not verify with CN=A"),
    ]
    for found, reason, words in cases:
        assert found.chain is None and found.problem is not None
        assert found.problem.reason is reason and words in found.problem.message, found.problem.message


def test_time_and_ca_flag_problems() -> None:
    root = issue("root", ca=True)
    old_a = issue("A", root, ca=True, not_after=NOW - timedelta(days=1))
    leaf = issue("dev", old_a)
    found = build_path([leaf.cert, old_a.cert], [root.cert], NOW)
    assert found.problem is not None and found.problem.reason is R.CERT_EXPIRED
    assert "CA certificate CN=A" in found.problem.message
    not_ca = issue("notca", root)
    leaf2 = issue("dev2", not_ca)
    found = build_path([leaf2.cert, not_ca.cert], [root.cert], NOW)
    assert (
        found.problem is not None and found.problem.reason is R.CHAIN_INVALID and "is not a CA" in found.problem.message
    )


def test_check_leaf() -> None:
    dev = issue("dev-1", issue("r", ca=True))
    assert check_leaf(None, "dev-1", NOW).reason is R.NO_CERTIFICATE  # type: ignore[union-attr]
    assert check_leaf(dev.cert, "dev-2", NOW).message == "CN 'dev-1' != registration id 'dev-2'"  # type: ignore[union-attr]
    assert check_leaf(dev.cert, "dev-1", NOW) is None


def test_extend_above_the_anchor() -> None:
    h = seed004()
    assert extend_above((h.devices["dev-1"].cert, h.a.cert), [h.b.cert, h.root.cert]) == (
        h.devices["dev-1"].cert,
        h.a.cert,
        h.root.cert,
    )


def test_certificate_info_and_loading() -> None:
    h = seed004()
    info = certificate_info(h.a.cert)
    assert info["subjectName"] == "CN=A" and info["issuerName"] == "CN=root"
    assert info["sha256Thumbprint"] == h.a.sha256 and info["sha256Thumbprint"].isupper()
    assert len(info["sha1Thumbprint"]) == 40
    bundle = h.a.pem + h.root.pem
    assert load_certificates(bundle) == [h.a.cert, h.root.cert]
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    der = h.a.cert.public_bytes(Encoding.DER)
    assert load_certificate(der) == h.a.cert
    assert load_certificate(base64.b64encode(der).decode()) == h.a.cert
