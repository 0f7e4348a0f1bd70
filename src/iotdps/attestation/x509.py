"""X.509 attestation: what the TLS layer proved, and words for when it proved nothing.

The TLS layer hands over, per connection, the chain the device presented (leaf first), the chain
OpenSSL verified and the chain policy accepted (leaf..anchor, or None) and the errors of both.
Its trust store holds every verified uploaded CA and every individual enrollment's client
certificates, with PARTIAL_CHAIN, so the anchor may be a root, an intermediate or the leaf itself.
We do not re-verify a chain OpenSSL verified (architecture.md).

`evidence_from_chain` is the verifier for callers without a TLS handshake, or whose handshake ran
against older anchors (`iotdps explain`, the API's /explain, the server's on-demand trust reload):
cryptography's client verifier under the same chain policy (`iotdps.pki.chain_policy`), so its
verdict is the handshake's.

`diagnose` never admits: it says *why* a chain did not verify, in words naming the certificate at
fault. `build_path` is our own walker, kept for those words only (which certificate is missing,
uploaded but not verified, expired, signed by a same-named CA with another key: the verifiers
give one terse reason); on the path it finds, the chain policy names any rule that is broken.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from iotdps.ids import same_registration_id
from iotdps.pki import certs
from iotdps.pki.chain_policy import Rule, path_problems, verify_client_chain
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.refusals import RefusalReason

__all__ = [
    "MAX_CHAIN_DEPTH",
    "ChainProblem",
    "X509Evidence",
    "build_path",
    "check_leaf",
    "diagnose",
    "evidence_from_chain",
    "extend_above",
]

MAX_CHAIN_DEPTH = 10


@dataclass(frozen=True, slots=True)
class X509Evidence:
    """What the TLS layer saw. `verified` is None when OpenSSL did not verify the chain."""

    presented: tuple[x509.Certificate, ...]
    verified: tuple[x509.Certificate, ...] | None = None
    errors: tuple[str, ...] = ()

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.presented[0] if self.presented else None


@dataclass(frozen=True, slots=True)
class ChainProblem:
    reason: RefusalReason
    message: str


@dataclass(frozen=True, slots=True)
class _Path:
    chain: tuple[x509.Certificate, ...] | None
    problem: ChainProblem | None = None
    unverified_seen: tuple[str, ...] = field(default=())


def _time_problem(cert: x509.Certificate, now: datetime, what: str) -> ChainProblem | None:
    if now < certs.not_before(cert):
        return ChainProblem(
            RefusalReason.CERT_NOT_YET_VALID,
            f"{what} {certs.describe(cert)} is not valid before {certs.not_before(cert):%Y-%m-%d %H:%M:%SZ}",
        )
    if now > certs.not_after(cert):
        return ChainProblem(
            RefusalReason.CERT_EXPIRED,
            f"{what} {certs.describe(cert)} expired at {certs.not_after(cert):%Y-%m-%d %H:%M:%SZ}",
        )
    return None


def check_leaf(leaf: x509.Certificate | None, registration_id: str, now: datetime) -> ChainProblem | None:
    """The checks on the leaf that hold whatever the chain: present, CN, validity in time."""
    if leaf is None:
        return ChainProblem(RefusalReason.NO_CERTIFICATE, "the device presented no client certificate")
    cn = certs.common_name(leaf)
    # Registration ids are case-insensitive (iotdps.ids), so is their match with the CN.
    if cn is None or not same_registration_id(cn, registration_id):
        return ChainProblem(RefusalReason.CN_MISMATCH, f"CN {cn!r} != registration id {registration_id!r}")
    return _time_problem(leaf, now, "device certificate")


def build_path(
    presented: Sequence[x509.Certificate],
    anchors: Iterable[x509.Certificate],
    now: datetime,
    *,
    known: Iterable[x509.Certificate] = (),
    uploaded: Mapping[str, tuple[str, bool]] | None = None,
) -> _Path:
    """Walk from the leaf to an anchor, checking signatures, CA flags and validity times: for the
    words of `diagnose`, never to admit (the chain policy's verifier does that).

    `anchors`: trusted certificates (verified CAs, enrolled device certificates). `known`: other
    certificates that may fill gaps (unverified uploads, group signing certificates).
    `uploaded`: sha256 -> (name, verified) of uploaded CAs, used only for words.
    """
    if not presented:
        return _Path(None, ChainProblem(RefusalReason.NO_CERTIFICATE, "the device presented no client certificate"))
    uploaded = uploaded or {}
    anchor_prints = {sha256_thumbprint(a): a for a in anchors}
    pool: list[x509.Certificate] = []
    seen: set[str] = set()
    # Preference when several certificates could be the issuer: anchors, then what the device
    # sent, then other known certificates.
    for cert in (*anchor_prints.values(), *presented[1:], *known):
        tp = sha256_thumbprint(cert)
        if tp not in seen:
            seen.add(tp)
            pool.append(cert)

    leaf = presented[0]
    problem = _time_problem(leaf, now, "device certificate")
    if problem:
        return _Path(None, problem)
    path = [leaf]
    unverified: list[str] = []
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        tp = sha256_thumbprint(current)
        if tp in anchor_prints:
            return _Path(tuple(path))
        if tp in uploaded and not uploaded[tp][1]:
            unverified.append(uploaded[tp][0])
        in_path = {sha256_thumbprint(c) for c in path}
        issuer = next(
            (c for c in pool if sha256_thumbprint(c) not in in_path and certs.signed_by(current, c)), None
        )
        if issuer is None:
            return _Path(None, _dead_end(current, leaf, pool, in_path, unverified), tuple(unverified))
        if not certs.is_ca(issuer):
            return _Path(
                None,
                ChainProblem(
                    RefusalReason.CHAIN_INVALID,
                    f"{certs.describe(issuer)} signed {certs.describe(current)} but is not a CA (basicConstraints)",
                ),
            )
        problem = _time_problem(issuer, now, "CA certificate")
        if problem:
            return _Path(None, problem)
        path.append(issuer)
        current = issuer
    return _Path(
        None, ChainProblem(RefusalReason.CHAIN_INVALID, f"chain is longer than {MAX_CHAIN_DEPTH} certificates")
    )


def _dead_end(
    current: x509.Certificate,
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    in_path: set[str],
    unverified: Sequence[str],
) -> ChainProblem:
    # The most useful explanation first: a CA the operator uploaded but never verified.
    if unverified:
        return ChainProblem(RefusalReason.CA_NOT_VERIFIED, f"CA {unverified[-1]} is not verified")
    lookalike = next(
        (c for c in pool if sha256_thumbprint(c) not in in_path and current.issuer == c.subject), None
    )
    if lookalike is not None:
        # A signature algorithm the policy refuses (SHA-1, MD5) does not verify at all: say so.
        weak = [p for p in path_problems([current, lookalike]) if p.rule is Rule.SIGNATURE and p.depth == 0]
        if weak:
            return ChainProblem(RefusalReason.CHAIN_INVALID, weak[0].describe(certs.describe))
        return ChainProblem(
            RefusalReason.CHAIN_INVALID,
            f"the signature on {certs.describe(current)} does not verify with {certs.describe(lookalike)}",
        )
    if current is leaf:
        if certs.is_self_issued(leaf):
            return ChainProblem(
                RefusalReason.CHAIN_UNKNOWN_CA,
                f"self-signed device certificate {certs.describe(leaf)} is not enrolled",
            )
        return ChainProblem(
            RefusalReason.CHAIN_UNKNOWN_CA,
            f"chain stops at the device certificate; its issuer {current.issuer.rfc4514_string()} is not uploaded",
        )
    kind = "root" if certs.is_self_issued(current) else "intermediate"
    return ChainProblem(
        RefusalReason.CHAIN_UNKNOWN_CA,
        f"chain stops at {kind} {certs.describe(current)}, which is not uploaded",
    )


def evidence_from_chain(
    chain: Sequence[x509.Certificate], anchors: Iterable[x509.Certificate], now: datetime
) -> X509Evidence:
    """Verify `chain` (leaf first) against `anchors` under the chain policy, shaped like the TLS
    layer's answer; a refusal says why in words (the walker's, where the verifier is terse)."""
    anchors = list(anchors)
    verdict = verify_client_chain(chain, anchors, now)
    if verdict.path is not None:
        return X509Evidence(tuple(chain), verdict.path, ())
    if verdict.problems or not chain:
        return X509Evidence(tuple(chain), None, tuple(verdict.reasons(certs.describe)))
    found = build_path(chain, anchors, now)
    if found.problem is not None:
        return X509Evidence(tuple(chain), None, (found.problem.message,))
    assert found.chain is not None
    words = [p.describe(certs.describe) for p in path_problems(found.chain, now)]
    return X509Evidence(tuple(chain), None, tuple(words or verdict.reasons(certs.describe)))


_POLICY_REASONS = {Rule.EXPIRED: RefusalReason.CERT_EXPIRED, Rule.NOT_YET_VALID: RefusalReason.CERT_NOT_YET_VALID}


def diagnose(
    evidence: X509Evidence,
    anchors: Iterable[x509.Certificate],
    known: Iterable[x509.Certificate],
    uploaded: Mapping[str, tuple[str, bool]],
    now: datetime,
) -> ChainProblem:
    """Why a chain the TLS layer refused does not verify, in words naming the certificate at fault.

    Never admits: if the walker finds a path (a CA verified after the TLS context was built,
    say), the chain policy's words on that path, or else the TLS layer's errors, are the answer.
    """
    found = build_path(evidence.presented, anchors, now, known=known, uploaded=uploaded)
    if found.problem is not None:
        return found.problem
    assert found.chain is not None
    broken = path_problems(found.chain, now)
    if broken:
        reason = _POLICY_REASONS.get(broken[0].rule, RefusalReason.CHAIN_INVALID)
        return ChainProblem(reason, "; ".join(p.describe(certs.describe) for p in broken))
    detail = "; ".join(evidence.errors) or "no detail"
    return ChainProblem(RefusalReason.CHAIN_INVALID, f"TLS verification failed ({detail})")


def extend_above(chain: Sequence[x509.Certificate], known: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The verified chain continued above its anchor, through known CA certificates, to a root.

    OpenSSL stops at the first anchor (PARTIAL_CHAIN), but a group on a CA above it (the root
    group of seed 004) must still be found. Each step is signature-checked.
    """
    out = list(chain)
    pool = list(known)
    for _ in range(MAX_CHAIN_DEPTH):
        top = out[-1]
        if certs.is_self_issued(top) and certs.signed_by(top, top):
            break
        in_path = {sha256_thumbprint(c) for c in out}
        issuer = next((c for c in pool if sha256_thumbprint(c) not in in_path and certs.signed_by(top, c)), None)
        if issuer is None:
            break
        out.append(issuer)
    return tuple(out)
