"""Attestation mechanisms as plug-ins behind one Protocol, keyed by the credential's type.

A mechanism turns what the device presented into an `Authentication`: the precedence decision
(which enrollment, admitted or refused, in words) plus what the hub identity needs (thumbprints
or keys) and what a custom-allocation webhook is told about the device. It reads the store
(read phase only) to fetch the candidates, then calls the pure `enrollment.resolve` functions.
A credential type nobody registered is answered UNSUPPORTED_ATTESTATION, never a crash.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from cryptography import x509

from iotdps.attestation.tpm import TpmEvidence
from iotdps.attestation.x509 import X509Evidence, check_leaf, diagnose, extend_above
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.enrollment.resolve import CaStep, Decision, resolve_symmetric_key, resolve_x509
from iotdps.errors import InvalidInput
from iotdps.pki import certs
from iotdps.pki.encoding import certificate_info, load_certificate, sha1_thumbprint, sha256_thumbprint
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason
from iotdps.registry.models import DeviceAuth
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME, SasCheck, check_token, derive_device_key, parse_sas
from iotdps.secret import Secret

__all__ = [
    "AttestationKind",
    "Authentication",
    "Credential",
    "Mechanism",
    "SasCredential",
    "SymmetricKeyMechanism",
    "TpmMechanism",
    "X509Mechanism",
    "known_ca_certificates",
    "mechanism_for",
]

AttestationKind = Literal["x509", "symmetricKey", "tpm"]


@dataclass(frozen=True, slots=True)
class SasCredential:
    """The SAS token a device sent (MQTT password or HTTP Authorization header), as received."""

    token: Secret[str]


Credential = X509Evidence | SasCredential | TpmEvidence


@dataclass(frozen=True, slots=True)
class Authentication:
    decision: Decision
    attestation_type: AttestationKind | None  # None: refused before a mechanism was chosen
    device_auth: DeviceAuth | None = None
    webhook_context: Mapping[str, Any] = field(default_factory=dict)
    leaf_sha256: str | None = None
    # X.509: the leaf's CN exactly as written (the hub compares it with the device id).
    common_name: str | None = None


class Mechanism(Protocol):
    name: AttestationKind

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication: ...


def _refuse(kind: AttestationKind, reason: RefusalReason, message: str, steps: Sequence[str] = ()) -> Authentication:
    return Authentication(Decision(False, reason=reason, message=message, steps=tuple(steps)), kind)


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


async def _trust(uow: UnitOfWork) -> _Trust:
    async def build() -> _Trust:
        cas = await uow.cas.list()
        return _Trust(
            {ca.sha256_thumbprint: (ca.name, ca.is_verified) for ca in cas},
            {ca.sha256_thumbprint: cert for ca in cas if (cert := _load(ca.certificate)) is not None},
            frozenset(ca.sha256_thumbprint for ca in cas if ca.is_verified),
        )

    return await uow.derived(("x509 trust",), build)


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
                _refuse("x509", RefusalReason.CA_NOT_VERIFIED, f"CA {trust.uploaded[anchor_tp][0]} is not verified")
            )
        return _AboveLeaf(
            _refuse(
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


class X509Mechanism:
    name: AttestationKind = "x509"

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        evidence: X509Evidence = credential
        problem = check_leaf(evidence.leaf, registration_id, now)
        if problem is not None:
            return _refuse("x509", problem.reason, problem.message)
        leaf = evidence.presented[0]
        leaf_sha256 = sha256_thumbprint(leaf)
        trust = await _trust(uow)
        individual = await uow.enrollments.get(registration_id)

        if evidence.verified is None:
            if individual is None and len(evidence.presented) == 1 and certs.is_self_issued(leaf):
                # A lone self-signed certificate can only be admitted by an individual
                # enrollment; say so, whatever the TLS trust store held at the handshake
                # (the verified path below reaches the same words).
                return _refuse(
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
            found = diagnose(evidence, anchors, known, trust.uploaded, now)
            return _refuse("x509", found.reason, found.message)

        chain = evidence.verified
        if len(chain) == 1:  # the leaf itself is the TLS anchor (an enrolled device certificate)
            above = await _above_leaf(uow, chain, trust, anchored_at_leaf=True)
        else:
            # Every device of a production line presents the same CAs above its leaf: their
            # thumbprints key the answer, kept while no CA, group or setting changes.
            key = ("x509 above leaf", *(sha256_thumbprint(c) for c in chain[1:]))
            above = await uow.derived(key, lambda: _above_leaf(uow, chain, trust, anchored_at_leaf=False))
        if above.refusal is not None:
            return above.refusal
        decision = resolve_x509(
            registration_id, leaf_sha256, individual, above.steps, reaches_verified_ca=above.reaches_verified
        )
        auth = DeviceAuth("selfSigned", primary_thumbprints=(leaf_sha256, sha1_thumbprint(leaf)))
        context = _X509WebhookContext(leaf)
        return Authentication(
            decision, "x509", auth if decision.admitted else None, context, leaf_sha256, certs.common_name(leaf)
        )


class SymmetricKeyMechanism:
    name: AttestationKind = "symmetricKey"

    def __init__(self, max_token_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME) -> None:
        self.max_token_lifetime = max_token_lifetime

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        sas: SasCredential = credential
        if not sas.token.reveal():
            return _refuse("symmetricKey", RefusalReason.SAS_MISSING, "the device sent no SAS token")
        parsed = parse_sas(sas.token.reveal())
        if isinstance(parsed, SasCheck):
            return _refuse("symmetricKey", parsed.reason, parsed.message)
        checked = check_token(parsed, id_scope, registration_id, now, self.max_token_lifetime)
        if checked is not None:
            return _refuse("symmetricKey", checked.reason, checked.message)
        individual = await uow.enrollments.get(registration_id)
        groups: Sequence[EnrollmentGroup] = () if individual is not None else await uow.groups.list_symmetric_key()
        decision = resolve_symmetric_key(registration_id, parsed, individual, groups)
        auth: DeviceAuth | None = None
        if decision.admitted:
            auth = _sas_device_auth(registration_id, decision.individual, decision.group)
        return Authentication(decision, "symmetricKey", auth, {"symmetricKey": {}})


def _sas_device_auth(
    registration_id: str, individual: IndividualEnrollment | None, group: EnrollmentGroup | None
) -> DeviceAuth | None:
    # The hub identity gets the same key material the device signs with (azure-wire-protocol.md 1.3).
    if individual is not None and individual.attestation.symmetric_key is not None:
        primary, secondary = individual.attestation.symmetric_key.keys()
        return DeviceAuth("sas", Secret(primary), Secret(secondary))
    if group is not None and group.attestation.symmetric_key is not None:
        primary, secondary = group.attestation.symmetric_key.keys()
        return DeviceAuth(
            "sas",
            Secret(derive_device_key(primary, registration_id)),
            Secret(derive_device_key(secondary, registration_id)),
        )
    return None


class TpmMechanism:
    name: AttestationKind = "tpm"

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        return _refuse("tpm", RefusalReason.UNSUPPORTED_ATTESTATION, "TPM attestation is not supported yet")


_MECHANISMS: dict[type, Mechanism] = {
    X509Evidence: X509Mechanism(),
    SasCredential: SymmetricKeyMechanism(),
    TpmEvidence: TpmMechanism(),
}


def mechanism_for(credential: object, *, max_token_lifetime: int | None = None) -> Mechanism | None:
    """The mechanism for this credential's type; `max_token_lifetime` overrides the default
    maximum lifetime of SAS tokens (seconds)."""
    if max_token_lifetime is not None and isinstance(credential, SasCredential):
        return SymmetricKeyMechanism(max_token_lifetime)
    return _MECHANISMS.get(type(credential))


def known_ca_certificates(cas: Sequence[CaCertificate]) -> list[x509.Certificate]:
    return [c for ca in cas if (c := _load(ca.certificate)) is not None]
