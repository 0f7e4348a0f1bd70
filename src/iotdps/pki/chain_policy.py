"""The one X.509 chain policy for device certificates, and the verifier that applies it.

Every place that decides whether a device chain is good uses this module, so that they agree on
every chain (tests/attack/test_x509_chains.py holds them to it):

- the TLS seam (`server/tls.py`), on every handshake of every listener (DPS and hub; MQTT,
  HTTPS, websockets). OpenSSL has verified the chain there, with the client purpose and its
  default security level 2 (signatures, validity times, basic constraints, path length, the
  critical extensions it knows, RSA >= 2048 bits, no SHA-1). `path_problems` then adds the
  rules below on the path OpenSSL built, with no signature work: the architecture's "do not
  re-verify in Python what OpenSSL verified" stands, and a CA's verdict is memoised, so a
  production line's shared intermediates cost a dictionary look-up per handshake.
- the fallback when OpenSSL refused a chain against anchors that may be older than the store
  (`Server.refreshed_peer`), `iotdps explain` and the API's /explain (through
  `attestation.x509.evidence_from_chain`), and `iotdps cert verify` (`pki.chain`):
  `verify_client_chain`, i.e. cryptography's client verifier (path building, signatures,
  validity, path length, unknown critical extensions, RSA >= 2048 and the signature algorithm
  allow-list for issuers), configured by the extension policies below, then `path_problems` on
  the path it built.

A chain is good when it passes both halves; the halves differ only where `path_problems`
refuses anyway, which is what makes the verdicts agree. The rules, in operator's words (the
README's "Who gets in" says the same):

- every certificate is X.509 v3 with a sane serial number and is valid now (the trust anchor
  included); a CA's subject and issuer names are not empty;
- keys: RSA of at least 2048 bits, or EC on P-256 or P-384; nothing else (P-521, brainpool,
  Ed25519 and DSA are refused);
- signatures: RSA PKCS#1 v1.5 or RSASSA-PSS with SHA-256/384/512, or ECDSA with SHA-256/384/512;
  never SHA-1 or MD5. The anchor's own signature is not relied upon, so it is not judged;
- a critical extension outside the eight the verifier understands (basic constraints, key usage,
  extended key usage, SAN, name constraints, AKI, SKI, AIA) is refused, on any certificate;
- the device certificate (the leaf) is not a CA; if it has a key usage, it includes
  digitalSignature (which the TLS client signature needs) and not keyCertSign; if it has an
  extended key usage, it includes clientAuth. anyExtendedKeyUsage alone does not do: OpenSSL's
  TLS client purpose (the handshake's verdict) refuses it, and so does cryptography. A leaf
  with no extended key usage at all is accepted: RFC 5280 reads it as "any use", OpenSSL and
  cryptography accept it, and many device certificates made by other tools have none;
- every certificate above the leaf is a CA (basic constraints cA, any criticality, as RFC 5280's
  path validation asks); its key usage, if present, includes keyCertSign, and a CA below the
  trust anchor must have one (RFC 5280 4.2.1.3 requires it of conforming CAs; it is what keeps a
  mis-issued device certificate with CA:TRUE from minting devices). The anchor itself may lack
  it (an operator's `openssl req -x509` root has none); its extended key usage, if present,
  includes clientAuth (OpenSSL's client purpose refuses anyExtendedKeyUsage alone there too);
- path length: a CA's pathLenConstraint counts every intermediate below it (self-issued ones
  too, as cryptography does; RFC 5280 would skip those, OpenSSL does), at most 8 in all;
- no certificate of the path is revoked by a CRL the caller holds (`pki.revocation`: the
  service's uploaded CRLs, or the CA directory's for `cert verify`), nor is under a revoked CA.
  Neither verifier reads CRLs here, so this rule is only `path_problems`'s: it runs on the path
  either verifier built, which is what keeps the three callers in agreement.

Trust anchors are the verified uploaded CAs and the individual enrollments' certificates. Any of
them ends a path (partial-chain semantics), whether root, intermediate or the device certificate
itself; cryptography's store ends a path at the first certificate it holds, as OpenSSL's
PARTIAL_CHAIN does, and still applies the leaf rules to a leaf that is itself an anchor.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, PublicKeyAlgorithmOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from iotdps.pki.certs import certificate_label
from iotdps.pki.revocation import Revocations

__all__ = [
    "MAX_INTERMEDIATES",
    "MIN_RSA_BITS",
    "ChainVerdict",
    "PolicyProblem",
    "Rule",
    "leaf_problems",
    "path_problems",
    "verify_client_chain",
]

MIN_RSA_BITS = 2048
# cryptography's default, and below OpenSSL's verify depth (10), so the verifier decides.
MAX_INTERMEDIATES = 8
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
_HASHES = frozenset({"sha256", "sha384", "sha512"})
_SIGNATURES = frozenset(
    {
        SignatureAlgorithmOID.RSA_WITH_SHA256,
        SignatureAlgorithmOID.RSA_WITH_SHA384,
        SignatureAlgorithmOID.RSA_WITH_SHA512,
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
_WEAK_NAMES = {
    SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID._RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.RSA_WITH_MD5: "MD5",
}
# The extensions cryptography's verifier understands; a critical one outside them is refused
# by the verifier, and so here, although OpenSSL knows a few more (certificate policies...).
_KNOWN = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
)
_EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


class Rule(enum.IntEnum):
    """Which rule a certificate broke; the value is the OpenSSL verify code closest to it, so the
    TLS seam can report a policy refusal next to OpenSSL's own (x509_vfy.h numbers)."""

    CHAIN_TOO_LONG = 22
    REVOKED = 23
    NOT_YET_VALID = 9
    EXPIRED = 10
    PATH_LENGTH = 25
    PURPOSE = 26  # the leaf is a CA, or its key usage / extended key usage does not allow TLS client use
    MALFORMED = 28  # not v3, a bad serial number, an empty issuer, unreadable extensions
    NO_CERT_SIGN = 32
    CRITICAL_EXTENSION = 34
    KEY = 66
    SIGNATURE = 68
    NOT_A_CA = 79


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One broken rule. `depth` 0 is the leaf. `template` names the certificate as `{cert}`, so
    each caller renders it in its own style (`describe`)."""

    depth: int
    rule: Rule
    certificate: x509.Certificate
    template: str

    def describe(self, label: Callable[[x509.Certificate], str] | None = None) -> str:
        return self.template.replace("{cert}", (label or certificate_label)(self.certificate))


# ---------------------------------------------------------------------------- single rules
# Each returns the broken rule and the words, or None. They are shared by `path_problems` and
# by the validators handed to cryptography's verifier, so both speak the same rule.

_Finding = tuple[Rule, str] | None


def _basics(cert: x509.Certificate, *, names: bool) -> _Finding:
    if cert.version is not x509.Version.v3:
        return Rule.MALFORMED, "{cert} is an X.509 v1 certificate; v3 is required"
    serial = cert.serial_number
    # cryptography's verifier takes 1..21 octets (20 plus a sign octet), never negative.
    if serial < 0 or (serial.bit_length() // 8 + 1) > 21:
        return Rule.MALFORMED, "{cert} has a serial number that is negative or longer than 20 octets"
    # Names are checked on CAs only (memoised): building a leaf's issuer Name costs as much as
    # the rest of its checks. A leaf with an empty issuer chains only to a CA with an empty
    # subject, refused here, or is self-signed with no CN, refused as no registration id.
    if names and (len(cert.issuer) == 0 or len(cert.subject) == 0):
        return Rule.MALFORMED, "{cert} has an empty issuer or subject name"
    return None


def _key(cert: x509.Certificate) -> _Finding:
    algorithm = cert.public_key_algorithm_oid
    try:
        key = cert.public_key()
    except (ValueError, TypeError, NotImplementedError) as exc:
        # An unknown algorithm or curve, or explicit curve parameters.
        return Rule.KEY, f"{{cert}} has a key this service does not accept ({type(exc).__name__})"
    if algorithm == PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5 and isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return Rule.KEY, f"{{cert}} has an RSA-{key.key_size} key; at least RSA-{MIN_RSA_BITS} is required"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            return Rule.KEY, f"{{cert}} has a key on the curve {key.curve.name}; only P-256 and P-384 are accepted"
        return None
    what = "RSA-PSS" if algorithm == PublicKeyAlgorithmOID.RSASSA_PSS else type(key).__name__.removesuffix("PublicKey")
    return Rule.KEY, f"{{cert}} has a {what} key; only RSA (2048 bits or more) and EC P-256 or P-384 keys are accepted"


def _signature(cert: x509.Certificate) -> _Finding:
    oid = cert.signature_algorithm_oid
    if oid in _SIGNATURES:
        return None
    if oid == SignatureAlgorithmOID.RSASSA_PSS:
        params = cert.signature_algorithm_parameters
        algorithm = cert.signature_hash_algorithm
        if isinstance(params, padding.PSS) and algorithm is not None and algorithm.name in _HASHES:
            mgf = params.mgf
            # cryptography keeps the salt length private; the verifier wants salt = digest size
            # and MGF1 over the same hash, and so do we, or the two halves would disagree.
            salt = getattr(params, "_salt_length", None)
            mgf_hash = getattr(mgf, "_algorithm", None)
            if salt == algorithm.digest_size and mgf_hash is not None and mgf_hash.name == algorithm.name:
                return None
        return Rule.SIGNATURE, "{cert} is signed with RSASSA-PSS parameters this service does not accept"
    weak = _WEAK_NAMES.get(oid)
    if weak is not None:
        return Rule.SIGNATURE, f"{{cert}} is signed with {weak}, which is too weak"
    name = getattr(oid, "_name", None) or oid.dotted_string
    return Rule.SIGNATURE, f"{{cert}} is signed with {name}; only RSA or ECDSA with SHA-256/384/512 are accepted"


@dataclass(frozen=True, slots=True)
class _Usage:
    """The three extensions the rules read, picked out in the one pass over the extensions."""

    bc: x509.BasicConstraints | None = None
    ku: x509.KeyUsage | None = None
    eku: x509.ExtendedKeyUsage | None = None


def _extensions(cert: x509.Certificate) -> tuple[_Usage | None, _Finding]:
    try:
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        return None, (Rule.MALFORMED, f"{{cert}} has extensions that cannot be read ({type(exc).__name__})")
    found: dict[x509.ObjectIdentifier, x509.ExtensionType] = {}
    problem: _Finding = None
    for ext in extensions:
        oid = ext.oid
        if oid in _USAGE_OIDS:
            found[oid] = ext.value
        elif problem is None and ext.critical and oid not in _KNOWN:
            name = getattr(oid, "_name", "Unknown OID")
            shown = oid.dotted_string if name == "Unknown OID" else f"{name} ({oid.dotted_string})"
            problem = Rule.CRITICAL_EXTENSION, f"{{cert}} carries the unknown critical extension {shown}"
    bc, ku, eku = (found.get(oid) for oid in _USAGE_OIDS)
    usage = _Usage(
        bc if isinstance(bc, x509.BasicConstraints) else None,
        ku if isinstance(ku, x509.KeyUsage) else None,
        eku if isinstance(eku, x509.ExtendedKeyUsage) else None,
    )
    return usage, problem


_USAGE_OIDS = (ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE)


def _eku_names(eku: x509.ExtendedKeyUsage) -> str:
    return ", ".join(_EKU_NAMES.get(u, u.dotted_string) for u in eku) or "nothing"


def _leaf_bc(bc: x509.BasicConstraints | None) -> _Finding:
    if bc is not None and bc.ca:
        return Rule.PURPOSE, "{cert} is a CA certificate (CA:TRUE); a device certificate must not be a CA"
    return None


def _leaf_ku(ku: x509.KeyUsage | None) -> _Finding:
    if ku is None:
        return None
    if not ku.digital_signature:
        return Rule.PURPOSE, "{cert} lacks keyUsage digitalSignature, which TLS client authentication needs"
    if ku.key_cert_sign:
        return Rule.PURPOSE, "{cert} asserts keyUsage keyCertSign, which only a CA certificate may"
    return None


def _leaf_eku(eku: x509.ExtendedKeyUsage | None) -> _Finding:
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH in eku:
        return None
    return (
        Rule.PURPOSE,
        f"wrong extended key usage: {{cert}} allows {_eku_names(eku)}; a device certificate needs clientAuth",
    )


def _ca_bc(bc: x509.BasicConstraints | None) -> _Finding:
    if bc is None or not bc.ca:
        return Rule.NOT_A_CA, "{cert} signed the certificate below it but is not a CA certificate (no CA:TRUE)"
    return None


def _ca_ku(ku: x509.KeyUsage | None, *, anchor: bool) -> _Finding:
    if ku is None:
        if anchor:
            return None
        return (
            Rule.NO_CERT_SIGN,
            "{cert} is a CA without a keyUsage extension; a CA below the trust anchor needs keyCertSign",
        )
    if not ku.key_cert_sign:
        return Rule.NO_CERT_SIGN, "{cert} is not allowed to sign certificates (keyUsage lacks keyCertSign)"
    return None


def _ca_eku(eku: x509.ExtendedKeyUsage | None) -> _Finding:
    # anyExtendedKeyUsage alone does not do here either: OpenSSL's TLS client purpose refuses a
    # CA that has it without clientAuth (cryptography would accept it).
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH in eku:
        return None
    return Rule.PURPOSE, f"{{cert}} is a CA whose extended key usage ({_eku_names(eku)}) does not allow clientAuth"


# ---------------------------------------------------------------------------- per certificate


def _leaf_findings(cert: x509.Certificate, *, signature: bool) -> list[tuple[Rule, str]]:
    found = [_basics(cert, names=False), _key(cert)]
    if signature:
        found.append(_signature(cert))
    usage, problem = _extensions(cert)
    found.append(problem)
    if usage is not None:
        found += [_leaf_bc(usage.bc), _leaf_ku(usage.ku), _leaf_eku(usage.eku)]
    return [f for f in found if f is not None]


def _ca_findings(cert: x509.Certificate, *, anchor: bool) -> list[tuple[Rule, str]]:
    found = [_basics(cert, names=True), _key(cert)]
    if not anchor:
        found.append(_signature(cert))
    usage, problem = _extensions(cert)
    found.append(problem)
    if usage is not None:
        found += [_ca_bc(usage.bc), _ca_ku(usage.ku, anchor=anchor), _ca_eku(usage.eku)]
    return [f for f in found if f is not None]


@dataclass(frozen=True, slots=True)
class _CaVerdict:
    certificate: x509.Certificate  # held, so that its id() is not reused while memoised
    findings: tuple[tuple[Rule, str], ...]
    path_length: int | None


# A CA certificate's verdict depends only on the certificate and whether it ends the path, and
# every device of a production line brings the same CAs: the TLS seam hands them over as the
# same objects (it parses each CA's DER once), so the memo is keyed by identity, which costs
# nothing per handshake (hashing a certificate hashes its DER). Bounded: cleared when full.
_CA_MEMO: dict[tuple[int, bool], _CaVerdict] = {}
_CA_MEMO_MAX = 4096


def _ca_verdict(cert: x509.Certificate, anchor: bool) -> _CaVerdict:
    key = (id(cert), anchor)
    found = _CA_MEMO.get(key)
    if found is None or found.certificate is not cert:
        path_length: int | None = None
        try:
            path_length = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
            pass  # no constraint to apply; the findings say what is wrong
        found = _CaVerdict(cert, tuple(_ca_findings(cert, anchor=anchor)), path_length)
        if len(_CA_MEMO) >= _CA_MEMO_MAX:
            _CA_MEMO.clear()
        _CA_MEMO[key] = found
    return found


def _time(cert: x509.Certificate, depth: int, now: dt.datetime) -> PolicyProblem | None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return PolicyProblem(
            depth, Rule.NOT_YET_VALID, cert, f"{{cert}} is not valid before {start:%Y-%m-%d %H:%M:%SZ}"
        )
    if now > end:
        return PolicyProblem(depth, Rule.EXPIRED, cert, f"{{cert}} expired at {end:%Y-%m-%d %H:%M:%SZ}")
    return None


def leaf_problems(leaf: x509.Certificate) -> list[PolicyProblem]:
    """The rules a device certificate must meet on its own, whatever its chain: for a leaf whose
    chain is unknown or did not verify (the hub's thumbprint devices, explanations). Its
    signature is not judged: it may be an enrolled self-signed certificate, i.e. an anchor."""
    return [PolicyProblem(0, rule, leaf, words) for rule, words in _leaf_findings(leaf, signature=False)]


def path_problems(
    path: Sequence[x509.Certificate], now: dt.datetime | None = None, revoked: Revocations | None = None
) -> list[PolicyProblem]:
    """Every rule the path (leaf first, trust anchor last) breaks; empty when it meets them all.

    No signature is checked: `path` is one OpenSSL or cryptography's verifier built. `now`:
    also check every certificate's validity (both verifiers have; callers explaining a path
    found elsewhere pass it). `revoked`: the revocations to enforce (none when not given);
    a revoked certificate is listed first, as it is the answer operators need."""
    if not path:
        return []
    problems: list[PolicyProblem] = []
    if revoked is not None:
        problems += [PolicyProblem(d, Rule.REVOKED, c, words) for d, c, words in revoked.path_problems(path)]
    last = len(path) - 1
    leaf = path[0]
    problems += [PolicyProblem(0, r, leaf, w) for r, w in _leaf_findings(leaf, signature=last > 0)]
    if last - 1 > MAX_INTERMEDIATES:
        problems.append(
            PolicyProblem(
                last,
                Rule.CHAIN_TOO_LONG,
                path[-1],
                f"the chain has {last - 1} intermediate CAs; at most {MAX_INTERMEDIATES}",
            )
        )
    for depth in range(1, last + 1):
        cert = path[depth]
        verdict = _ca_verdict(cert, depth == last)
        problems += [PolicyProblem(depth, r, cert, w) for r, w in verdict.findings]
        below = depth - 1  # the intermediates between this CA and the leaf
        if verdict.path_length is not None and below > verdict.path_length:
            problems.append(
                PolicyProblem(
                    depth,
                    Rule.PATH_LENGTH,
                    cert,
                    f"path length violated: {{cert}} allows at most {verdict.path_length} intermediate CA(s) "
                    f"below it, but the chain has {below}",
                )
            )
    if now is not None:
        for depth, cert in enumerate(path):
            problem = _time(cert, depth, now)
            if problem is not None:
                problems.append(problem)
    return problems


# ---------------------------------------------------------------------------- the verifier


class _Refused(ValueError):
    """Raised by a validator: cryptography's verifier turns it into a refusal of that candidate."""


def _enforce(finding: _Finding, cert: x509.Certificate) -> None:
    if finding is not None:
        raise _Refused(finding[1].replace("{cert}", certificate_label(cert)))


def _v_leaf_bc(policy: Policy, cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
    _enforce(_leaf_bc(bc), cert)


def _v_leaf_ku(policy: Policy, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    _enforce(_leaf_ku(ku), cert)


def _v_leaf_eku(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    _enforce(_leaf_eku(eku), cert)


def _v_ca_bc(policy: Policy, cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    _enforce(_ca_bc(bc), cert)


def _v_ca_ku(policy: Policy, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    # Absence is judged by path_problems, which knows whether the CA is the trust anchor.
    if ku is not None:
        _enforce(_ca_ku(ku, anchor=True), cert)


def _v_ca_eku(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    _enforce(_ca_eku(eku), cert)


def _policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, leaf policy): cryptography's web-PKI defaults, relaxed where they ask more
    than RFC 5280 path validation and OpenSSL do (criticality of AKI/SKI/AIA/EKU and of a CA's
    basic constraints, a SAN and an AKI on the leaf: devices are named by their CN), and with
    our leaf, key usage and extended key usage rules in place of the web-PKI ones."""
    agnostic = Criticality.AGNOSTIC
    ca = (
        ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, agnostic, _v_ca_bc)
        .may_be_present(x509.KeyUsage, agnostic, _v_ca_ku)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _v_ca_eku)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.SubjectKeyIdentifier, agnostic, None)
        .may_be_present(x509.AuthorityInformationAccess, agnostic, None)
    )
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.BasicConstraints, agnostic, _v_leaf_bc)
        .may_be_present(x509.KeyUsage, agnostic, _v_leaf_ku)
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _v_leaf_eku)
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
        .may_be_present(x509.SubjectKeyIdentifier, agnostic, None)
        .may_be_present(x509.AuthorityInformationAccess, agnostic, None)
    )
    return ca, ee


_CA_POLICY, _EE_POLICY = _policies()


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """`path` (leaf first, anchor last) when the chain meets the policy; else `problems` says
    why, or, when cryptography's verifier found no path at all, `refusal` holds its words."""

    path: tuple[x509.Certificate, ...] | None
    problems: tuple[PolicyProblem, ...] = ()
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return self.path is not None

    def reasons(self, label: Callable[[x509.Certificate], str] | None = None) -> list[str]:
        out = [p.describe(label) for p in self.problems]
        if self.refusal is not None:
            out.append(self.refusal)
        return out


def verify_client_chain(
    presented: Sequence[x509.Certificate],
    anchors: Iterable[x509.Certificate],
    now: dt.datetime,
    revoked: Revocations | None = None,
) -> ChainVerdict:
    """Verify a device chain (leaf first, then whatever else it sent) against the anchors, with
    cryptography's client verifier and this policy. Used where OpenSSL's verdict is not at hand
    or may be stale; the handshake uses OpenSSL's path and `path_problems` instead."""
    if not presented:
        return ChainVerdict(None, refusal="the device presented no client certificate")
    trusted = list(dict.fromkeys(anchors))
    if not trusted:
        return ChainVerdict(None, refusal="no certificate is trusted (no verified CA, no X.509 enrollment)")
    leaf, *rest = presented
    verifier = (
        PolicyBuilder()
        .store(Store(trusted))
        .time(now)
        .max_chain_depth(MAX_INTERMEDIATES)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        path = tuple(verifier.verify(leaf, rest).chain)
    except VerificationError as exc:
        return ChainVerdict(None, refusal=f"the chain does not validate: {exc}")
    problems = path_problems(path, revoked=revoked)
    if problems:
        return ChainVerdict(None, tuple(problems))
    return ChainVerdict(path)
