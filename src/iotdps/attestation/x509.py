"""X.509 attestation: what the TLS layer proved, and words for when it proved nothing.

`X509Mechanism` decides on a device's chain: the leaf's own checks, then the CA steps above it
(each with the groups on it) for precedence, from the read cache for a known production line.

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
fault. `build_path` walks the chain with the walker `iotdps cert verify` uses too (`pki.path`),
for those words only (which certificate is missing, uploaded but not verified, expired, signed by
a same-named CA with another key: the verifiers give one terse reason); on the path it finds,
the chain policy names any rule that is broken.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.enrollment.models import AttestationType, EnrollmentGroup
from iotdps.enrollment.resolve import CaStep, Decision, resolve_x509
from iotdps.errors import InvalidInput
from iotdps.evidence import X509Evidence
from iotdps.hub.devices import DeviceAuth
from iotdps.ids import same_registration_id
from iotdps.pki import certs
from iotdps.pki.chain_policy import Rule, path_problems, verify_client_chain
from iotdps.pki.encoding import certificate_info, der_b64, load_certificate, sha1_thumbprint, sha256_thumbprint
from iotdps.pki.path import End, Walk, walk
from iotdps.pki.revocation import NO_REVOCATIONS, Revocations, load_crl
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason

__all__ = [
    "MAX_CHAIN_DEPTH",
    "ChainProblem",
    "X509Mechanism",
    "build_path",
    "check_leaf",
    "diagnose",
    "evidence_from_chain",
    "extend_above",
    "revocations_of",
]

MAX_CHAIN_DEPTH = 10


@dataclass(frozen=True, slots=True)
class ChainProblem:
    reason: RefusalReason
    message: str
    # CERT_REVOKED: the signature-checked path to an anchor (the device is who it says, and
    # revoked), so that its enrollment and registration record can be found.
    path: tuple[x509.Certificate, ...] | None = None


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
    """Walk from the leaf to an anchor (`pki.path`), checking CA flags and validity times: for the
    words of `diagnose`, never to admit (the chain policy's verifier does that).

    `anchors`: trusted certificates (verified CAs, enrolled device certificates). `known`: other
    certificates that may fill gaps (unverified uploads, group signing certificates).
    `uploaded`: sha256 -> (name, verified) of uploaded CAs, used only for words.
    """
    if not presented:
        return _Path(None, ChainProblem(RefusalReason.NO_CERTIFICATE, "the device presented no client certificate"))
    uploaded = uploaded or {}
    anchors = list(anchors)
    # Preference when several certificates could be the issuer: anchors, then what the device
    # sent, then other known certificates.
    walked = walk(presented[:1], [*anchors, *presented[1:], *known], anchors, max_steps=MAX_CHAIN_DEPTH)
    problem = _time_problem(walked.path[0], now, "device certificate")
    if problem:
        return _Path(None, problem)
    # The first broken link from the leaf up is the answer, as if the walk had stopped there.
    for child, issuer in itertools.pairwise(walked.path):
        if not certs.is_ca(issuer):
            return _Path(
                None,
                ChainProblem(
                    RefusalReason.CHAIN_INVALID,
                    f"{certs.describe(issuer)} signed {certs.describe(child)} but is not a CA (basicConstraints)",
                ),
            )
        problem = _time_problem(issuer, now, "CA certificate")
        if problem:
            return _Path(None, problem)
    if walked.anchored:
        return _Path(walked.path)
    if walked.end is End.TOO_LONG:
        return _Path(
            None, ChainProblem(RefusalReason.CHAIN_INVALID, f"chain is longer than {MAX_CHAIN_DEPTH} certificates")
        )
    unverified = tuple(
        uploaded[tp][0] for c in walked.path if (tp := sha256_thumbprint(c)) in uploaded and not uploaded[tp][1]
    )
    return _Path(None, _dead_end(walked, unverified), unverified)


def _dead_end(walked: Walk, unverified: Sequence[str]) -> ChainProblem:
    """Where a walk stopped short of an anchor, in the words attestation gives operators."""
    current, leaf = walked.top, walked.path[0]
    # The most useful explanation first: a CA the operator uploaded but never verified.
    if unverified:
        return ChainProblem(RefusalReason.CA_NOT_VERIFIED, f"CA {unverified[-1]} is not verified")
    lookalike = walked.lookalike
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
    chain: Sequence[x509.Certificate],
    anchors: Iterable[x509.Certificate],
    now: datetime,
    revoked: Revocations | None = None,
) -> X509Evidence:
    """Verify `chain` (leaf first) against `anchors` under the chain policy, shaped like the TLS
    layer's answer; a refusal says why in words (the walker's, where the verifier is terse).
    `revoked`: the CRLs to enforce, as the handshake does."""
    anchors = list(anchors)
    verdict = verify_client_chain(chain, anchors, now, revoked)
    if verdict.path is not None:
        return X509Evidence(tuple(chain), verdict.path, ())
    if verdict.problems or not chain:
        return X509Evidence(tuple(chain), None, tuple(verdict.reasons(certs.describe)))
    found = build_path(chain, anchors, now)
    if found.problem is not None:
        return X509Evidence(tuple(chain), None, (found.problem.message,))
    assert found.chain is not None
    words = [p.describe(certs.describe) for p in path_problems(found.chain, now, revoked)]
    return X509Evidence(tuple(chain), None, tuple(words or verdict.reasons(certs.describe)))


_POLICY_REASONS = {
    Rule.EXPIRED: RefusalReason.CERT_EXPIRED,
    Rule.NOT_YET_VALID: RefusalReason.CERT_NOT_YET_VALID,
    Rule.REVOKED: RefusalReason.CERT_REVOKED,
}


def diagnose(
    evidence: X509Evidence,
    anchors: Iterable[x509.Certificate],
    known: Iterable[x509.Certificate],
    uploaded: Mapping[str, tuple[str, bool]],
    now: datetime,
    revoked: Revocations = NO_REVOCATIONS,
) -> ChainProblem:
    """Why a chain the TLS layer refused does not verify, in words naming the certificate at fault.

    Never admits: if the walker finds a path (a CA verified after the TLS context was built,
    say), the chain policy's words on that path, or else the TLS layer's errors, are the answer.
    """
    found = build_path(evidence.presented, anchors, now, known=known, uploaded=uploaded)
    if found.problem is not None:
        return found.problem
    assert found.chain is not None
    broken = path_problems(found.chain, now, revoked)
    if broken:
        reason = _POLICY_REASONS.get(broken[0].rule, RefusalReason.CHAIN_INVALID)
        words = "; ".join(p.describe(certs.describe) for p in broken)
        if reason is RefusalReason.CERT_REVOKED and len(broken) == 1:
            return ChainProblem(reason, words, found.chain)
        return ChainProblem(reason, words)
    detail = "; ".join(evidence.errors) or "no detail"
    return ChainProblem(RefusalReason.CHAIN_INVALID, f"TLS verification failed ({detail})")


def extend_above(chain: Sequence[x509.Certificate], known: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The verified chain continued above its anchor, through known CA certificates, to a root.

    OpenSSL stops at the first anchor (PARTIAL_CHAIN), but a group on a CA above it (the root
    group of seed 004) must still be found. Each step is signature-checked (`pki.path`).
    """
    return walk(chain, known, max_steps=MAX_CHAIN_DEPTH).path


# --------------------------------------------------------------------------- the mechanism


@functools.lru_cache(maxsize=1024)
def _load(pem: str) -> x509.Certificate | None:
    # Memoised: every X.509 registration loads every uploaded CA and (above a non-root
    # anchor) every group's signing certificate; the PEM text fixes the (immutable) result.
    try:
        return load_certificate(pem)
    except InvalidInput:
        return None


async def _group_signing_certs(uow: UnitOfWork) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    continuation: str | None = None
    for _ in range(10_000):  # bounded: at most 10k pages of groups
        page = await uow.groups.list(page_size=500, continuation=continuation)
        for group in page.items:
            if group.attestation.x509 is None:
                continue
            for slot in group.attestation.x509.signing_certificates:
                cert = _load(slot.certificate) if slot else None
                if cert is not None:
                    out.append(cert)
        continuation = page.continuation
        if continuation is None:
            break
    return out


class _X509WebhookContext(Mapping[str, Any]):
    """{"x509": {"clientCertificateInfo": ...}} for a custom-allocation webhook, worked out only
    when a webhook is called: formatting the certificate's names and dates cost every X.509
    registration ~0.07 ms for a document most deployments never send."""

    def __init__(self, leaf: x509.Certificate) -> None:
        self._leaf = leaf
        self._value: dict[str, Any] | None = None

    def _context(self) -> dict[str, Any]:
        if self._value is None:
            self._value = {"x509": {"clientCertificateInfo": dict(certificate_info(self._leaf))}}
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._context()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("x509",))

    def __len__(self) -> int:
        return 1


@dataclass(frozen=True, slots=True)
class _Trust:
    """The uploaded CAs as the X.509 mechanism looks them up: by SHA-256 thumbprint."""

    uploaded: Mapping[str, tuple[str, bool]]  # thumbprint -> (name, verified)
    certificates: Mapping[str, x509.Certificate]
    verified: frozenset[str]
    revoked: Revocations = NO_REVOCATIONS


def revocations_of(cas: Iterable[Any]) -> Revocations:
    """The revocations of the uploaded CAs' CRLs (`enrollment.cas.CaCertificate.crl`, checked
    against each CA when it was uploaded), every uploaded CA walked for revoked CAs above it."""
    crls = []
    known = []
    for ca in cas:
        cert = _load(ca.certificate)
        if cert is None:
            continue
        known.append(cert)
        if ca.crl:
            try:
                crls.append((ca.name, cert, load_crl(ca.crl)))
            except InvalidInput:
                continue  # checked on upload; a damaged record must not stop every registration
    return Revocations.build(crls, known)


async def _trust(uow: UnitOfWork) -> _Trust:
    async def build() -> _Trust:
        cas = await uow.cas.list()
        return _Trust(
            {ca.sha256_thumbprint: (ca.name, ca.is_verified) for ca in cas},
            {ca.sha256_thumbprint: cert for ca in cas if (cert := _load(ca.certificate)) is not None},
            frozenset(ca.sha256_thumbprint for ca in cas if ca.is_verified),
            revocations_of(cas),
        )

    return await uow.cached_config_answer(("x509 trust",), build)


@dataclass(frozen=True, slots=True)
class _AboveLeaf:
    """What a verified chain says above its leaf: a refusal, or the CA steps precedence walks."""

    refusal: Authentication | None
    steps: tuple[CaStep, ...] = ()
    reaches_verified: bool = False


async def _above_leaf(
    uow: UnitOfWork, chain: Sequence[x509.Certificate], trust: _Trust, *, anchored_at_leaf: bool
) -> _AboveLeaf:
    """The verified chain's CA part: anchor still trusted, extended to a root, groups per CA.

    Nothing here depends on the leaf once the anchor is a CA, so for a device of a known
    production line the answer comes from the read cache (see `X509Mechanism`)."""
    anchor = chain[-1]
    anchor_tp = sha256_thumbprint(anchor)
    # The TLS trust store may be older than the store: re-check the anchor is still trusted.
    if not anchored_at_leaf and anchor_tp not in trust.verified:
        if anchor_tp in trust.uploaded:
            return _AboveLeaf(
                refuse("x509", RefusalReason.CA_NOT_VERIFIED, f"CA {trust.uploaded[anchor_tp][0]} is not verified")
            )
        return _AboveLeaf(
            refuse(
                "x509",
                RefusalReason.CHAIN_UNKNOWN_CA,
                f"chain stops at {certs.describe(anchor)}, which is not uploaded",
            )
        )
    extended = extend_above(chain, trust.certificates.values())
    if not (certs.is_self_issued(extended[-1])):
        extended = extend_above(extended, [*trust.certificates.values(), *await _group_signing_certs(uow)])
    steps: list[CaStep] = []
    for cert in extended[1:]:
        tp = sha256_thumbprint(cert)
        found_groups: dict[str, EnrollmentGroup] = {
            g.enrollment_group_id: g for g in await uow.groups.find_by_signing_thumbprint(tp)
        }
        if tp in trust.uploaded:
            for g in await uow.groups.find_by_ca_reference(trust.uploaded[tp][0]):
                found_groups.setdefault(g.enrollment_group_id, g)
        name, verified = trust.uploaded.get(tp, (None, False))
        steps.append(CaStep(certs.describe(cert), tp, tuple(found_groups.values()), name, verified))
    return _AboveLeaf(None, tuple(steps), any(step.sha256_thumbprint in trust.verified for step in steps))


async def _revoked(
    uow: UnitOfWork,
    registration_id: str,
    individual: Any,
    trust: _Trust,
    chain: Sequence[x509.Certificate],
    words: str,
) -> Authentication:
    """Refuse a device whose chain verified but is revoked, naming the enrollment that would
    have admitted it: its registration record then shows the revocation (provisioning.service)."""
    above = await _above_leaf(uow, chain, trust, anchored_at_leaf=len(chain) == 1)
    steps: tuple[str, ...] = ()
    individual_match, group = None, None
    if above.refusal is None:
        decision = resolve_x509(
            registration_id,
            sha256_thumbprint(chain[0]),
            individual,
            above.steps,
            reaches_verified_ca=above.reaches_verified,
        )
        steps, individual_match, group = decision.steps, decision.individual, decision.group
    refused = Decision(False, individual_match, group, RefusalReason.CERT_REVOKED, words, (*steps, f"revoked: {words}"))
    return Authentication(
        refused,
        "x509",
        leaf_sha256=sha256_thumbprint(chain[0]),
        common_name=certs.common_name(chain[0]),
        x509_path=tuple(der_b64(c) for c in chain),
    )


class X509Mechanism:
    name: AttestationType = "x509"

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        evidence: X509Evidence = credential
        problem = check_leaf(evidence.leaf, registration_id, now)
        if problem is not None:
            return refuse("x509", problem.reason, problem.message)
        leaf = evidence.presented[0]
        leaf_sha256 = sha256_thumbprint(leaf)
        trust = await _trust(uow)
        individual = await uow.enrollments.get(registration_id)

        if evidence.verified is None:
            if individual is None and len(evidence.presented) == 1 and certs.is_self_issued(leaf):
                # A lone self-signed certificate can only be admitted by an individual
                # enrollment; say so, whatever the TLS trust store held at the handshake
                # (the verified path below reaches the same words).
                return refuse(
                    "x509",
                    RefusalReason.NO_ENROLLMENT,
                    f"no individual enrollment {registration_id} for the self-signed certificate "
                    f"{certs.describe(leaf)}",
                )
            anchors = [trust.certificates[tp] for tp in trust.verified if tp in trust.certificates]
            if individual is not None and individual.attestation.x509 is not None:
                anchors += [
                    c for s in individual.attestation.x509.client_certificates if s and (c := _load(s.certificate))
                ]
            known = [*trust.certificates.values(), *await _group_signing_certs(uow)]
            found = diagnose(evidence, anchors, known, trust.uploaded, now, trust.revoked)
            if found.path is not None:
                return await _revoked(uow, registration_id, individual, trust, found.path, found.message)
            return refuse("x509", found.reason, found.message)

        chain = evidence.verified
        # The TLS layer enforced the revocations it held at the handshake; the store's may be
        # newer (a CRL uploaded a moment ago, maybe on another node).
        gone = trust.revoked.path_problems(chain) or trust.revoked.presented_problems(evidence.presented)
        if gone:
            words = "; ".join(w.replace("{cert}", certs.describe(c)) for _d, c, w in gone)
            return await _revoked(uow, registration_id, individual, trust, chain, words)
        if len(chain) == 1:  # the leaf itself is the TLS anchor (an enrolled device certificate)
            above = await _above_leaf(uow, chain, trust, anchored_at_leaf=True)
        else:
            # Every device of a production line presents the same CAs above its leaf: their
            # thumbprints key the answer, kept while no CA, group or setting changes.
            key = ("x509 above leaf", *(sha256_thumbprint(c) for c in chain[1:]))
            above = await uow.cached_config_answer(key, lambda: _above_leaf(uow, chain, trust, anchored_at_leaf=False))
        if above.refusal is not None:
            return above.refusal
        decision = resolve_x509(
            registration_id, leaf_sha256, individual, above.steps, reaches_verified_ca=above.reaches_verified
        )
        auth = DeviceAuth("selfSigned", primary_thumbprints=(leaf_sha256, sha1_thumbprint(leaf)))
        context = _X509WebhookContext(leaf)
        return Authentication(
            decision,
            "x509",
            auth if decision.admitted else None,
            context,
            leaf_sha256,
            certs.common_name(leaf),
            x509_path=tuple(der_b64(c) for c in chain) if decision.admitted else (),
        )
