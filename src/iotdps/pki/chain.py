"""Chain checks that explain themselves: why a device bundle would or would not validate.

OpenSSL and cryptography's verifier give a verdict and one terse reason. An operator holding a
device that fails to provision needs every reason, in words, with the fix: the clock is wrong,
the factory forgot the line intermediate, the certificate is a server certificate, the CN is not
a valid registration id, the key file belongs to another device. `explain_chain` walks the chain
(`pki.path`, the walker attestation's words use too) to find those, then asks cryptography's
verifier for the final verdict so that the answer never says "valid" when a real TLS stack
would refuse.

For device (client) chains both the words and the verdict are the service's chain policy
(`iotdps.pki.chain_policy`): `iotdps cert verify` says VALID exactly when the server's TLS
handshake and `iotdps explain` would accept the chain against the same anchors.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from iotdps.errors import ChainError, InvalidRegistrationId
from iotdps.ids import check_registration_id
from iotdps.pki.certs import describe_certificate, is_self_issued
from iotdps.pki.chain_policy import Rule, path_problems, verify_client_chain
from iotdps.pki.keys import public_keys_match
from iotdps.pki.path import End, walk
from iotdps.pki.revocation import Revocations

__all__ = ["ChainReport", "Purpose", "explain_chain", "verify_chain"]

Purpose = Literal["client", "server", "any"]

_EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


@dataclass(frozen=True)
class ChainReport:
    """The outcome of `explain_chain`: a verdict, the reasons and the path that was built.

    `path` runs from the leaf towards the root as far as it could be built. `problems` are the
    reasons it does not validate (empty when `valid`); `notes` are facts worth knowing.
    """

    valid: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()
    path: tuple[x509.Certificate, ...] = field(default=(), repr=False)

    def explain(self) -> str:
        lines: list[str] = []
        if self.path:
            lines.append("chain: " + " -> ".join(describe_certificate(c) for c in self.path))
        if self.valid:
            lines.append("VALID: the certificate chain validates.")
        else:
            lines.append("NOT VALID:")
            lines.extend(f"  - {p}" for p in self.problems)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _days(delta: dt.timedelta) -> str:
    d = abs(delta).days
    if d == 0:
        return "less than a day"
    return f"{d} day{'s' if d != 1 else ''}"


def _check_time(cert: x509.Certificate, now: dt.datetime, problems: list[str]) -> bool:
    """Report an expired or not-yet-valid certificate; True if it is not yet valid."""
    label = describe_certificate(cert)
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now > na:
        problems.append(f"{label} expired on {na:%Y-%m-%d %H:%M} UTC ({_days(now - na)} ago)")
    elif now < nb:
        problems.append(
            f"{label} is not yet valid: it starts {nb:%Y-%m-%d %H:%M} UTC, but the clock here reads "
            f"{now:%Y-%m-%d %H:%M} UTC ({_days(nb - now)} earlier)"
        )
        return True
    return False


def _check_leaf(
    cert: x509.Certificate, purpose: Purpose, registration_id: bool, problems: list[str], notes: list[str]
) -> None:
    """The leaf's own checks. A device certificate's structural rules (CA flag, key usage,
    extended key usage, key, signature) are the chain policy's, applied by explain_chain to the
    whole path; here only what the policy does not judge, and the server and "any" profiles."""
    label = describe_certificate(cert)
    if purpose == "client":
        if _ext(cert, x509.ExtendedKeyUsage) is None:
            notes.append(
                f"{label} has no extended key usage extension; accepted (RFC 5280 reads that as any use), "
                "but a device certificate should say clientAuth"
            )
        _check_registration_id(cert, label, registration_id, problems)
        return
    bc = _ext(cert, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        problems.append(f"{label} is a CA certificate (CA:TRUE), not a device or server certificate")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if purpose == "server":
        role = "a server certificate needs serverAuth (TLS server)"
        if isinstance(eku, x509.ExtendedKeyUsage):
            usages = list(eku)
            if (
                ExtendedKeyUsageOID.SERVER_AUTH not in usages
                and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages
            ):
                have = ", ".join(_EKU_NAMES.get(u, u.dotted_string) for u in usages) or "nothing"
                problems.append(f"wrong extended key usage: {label} allows {have}; {role}")
        else:
            notes.append(f"{label} has no extended key usage extension; {role}, so stricter stacks refuse it")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.digital_signature:
        problems.append(f"{label} lacks keyUsage digitalSignature, which a TLS handshake needs")


def _check_registration_id(cert: x509.Certificate, label: str, registration_id: bool, problems: list[str]) -> None:
    if registration_id:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not cns:
            problems.append(f"{label} has no CN; DPS takes the registration id from the CN")
        else:
            value = cns[-1].value
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            try:
                check_registration_id(text)
            except InvalidRegistrationId as exc:
                problems.append(f"the CN is not a valid DPS registration id: {exc.message}")


def _check_ca(cert: x509.Certificate, below: int, problems: list[str]) -> None:
    """`cert` signs the certificate below it; `below` intermediates (not the leaf) follow it."""
    label = describe_certificate(cert)
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        problems.append(f"{label} signed another certificate but is not a CA certificate (no CA:TRUE)")
        return
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        problems.append(f"{label} is not allowed to sign certificates (keyUsage lacks keyCertSign)")
    if bc.path_length is not None and below > bc.path_length:
        problems.append(
            f"path length violated: {label} allows at most {bc.path_length} intermediate CA(s) "
            f"below it, but the chain has {below}"
        )


def _verifier_error(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
    purpose: Purpose,
    server_name: str | None,
) -> str | None:
    """cryptography's verdict: None if it validates, else its reason."""
    # Server and "any" profiles only (device chains go through the chain policy); a device
    # names itself by its CN, where the web-PKI default wants a SAN.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    builder = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
    )
    try:
        if purpose == "server" and server_name:
            try:
                subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(server_name))
            except ValueError:
                subject = x509.DNSName(server_name)
            builder.build_server_verifier(subject).verify(leaf, list(intermediates))
        else:
            builder.build_client_verifier().verify(leaf, list(intermediates))
    except VerificationError as exc:
        return str(exc)
    except ValueError as exc:
        return str(exc)
    return None


def explain_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate] = (),
    roots: Sequence[x509.Certificate] = (),
    *,
    now: dt.datetime | None = None,
    purpose: Purpose = "client",
    check_cn: bool = True,
    public_key: CertificatePublicKeyTypes | None = None,
    server_name: str | None = None,
    revoked: Revocations | None = None,
) -> ChainReport:
    """Explain whether `leaf` (plus `intermediates`) chains to one of `roots` and is usable.

    `public_key` (from the device's private key) is compared with the leaf's. For purpose
    "client" the CN must be a valid registration id unless `check_cn` is false. `revoked`: the
    CRLs to enforce (the CA directory's), as the service enforces its own.
    """
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    problems: list[str] = []
    notes: list[str] = []
    if public_key is not None and not public_keys_match(public_key, leaf.public_key()):
        problems.append("the private key does not match the certificate (it belongs to another certificate)")
    _check_leaf(leaf, purpose, check_cn, problems, notes)

    walked = walk([leaf], [*intermediates, *roots], roots)
    path = list(walked.path)
    anchored = walked.anchored
    top = describe_certificate(walked.top)
    if walked.end is End.SELF_SIGNED:
        twin = any(r.subject == walked.top.subject for r in roots)
        problems.append(
            f"the chain ends at the self-signed {top}, which is not one of the trusted roots"
            + (" (a trusted root has the same name but a different key: a re-created root?)" if twin else "")
        )
    elif walked.end is End.WRONG_KEY and walked.lookalike is not None:
        weak = [p for p in path_problems([walked.top, walked.lookalike]) if p.rule is Rule.SIGNATURE and p.depth == 0]
        if weak:
            # SHA-1 or MD5: cryptography does not verify such a signature at all.
            problems.append(weak[0].describe(describe_certificate))
        else:
            problems.append(
                f"the signature on {top} does not verify with the key of "
                f"{describe_certificate(walked.lookalike)}: same name, different key (an old or re-created CA?)"
            )
    elif walked.end is End.NO_ISSUER:
        problems.append(
            f"missing intermediate: {top} was issued by {walked.top.issuer.rfc4514_string()!r}, "
            "and no certificate with that subject is in the bundle, the extra chain "
            "or the trusted roots"
        )
    elif walked.end is End.LOOP:
        problems.append("the chain loops back on itself")
    if not roots:
        problems.append("no trusted root was given, so nothing can anchor the chain")

    early = [_check_time(cert, when, problems) for cert in path]
    if any(early):
        # A certificate minted minutes ago that is "not yet valid" almost always means a clock is
        # wrong, not the certificate: say so once, as the original CLI's docs warn.
        problems.append(
            "hint: a certificate that is not yet valid usually means a wrong clock; check the date "
            "and time of this machine (or the device) and of the machine that issued it"
        )
    if purpose == "client":
        # The service's chain policy, in its own words, on the path as far as it was built
        # (validity was reported above, with the clock hint).
        problems.extend(p.describe(describe_certificate) for p in path_problems(path, revoked=revoked))
    else:
        # path[k] signs path[k-1]; below it are the k-1 certificates between it and the leaf,
        # minus self-issued ones, which RFC 5280 does not count.
        for k in range(1, len(path)):
            below = sum(1 for c in path[1:k] if not is_self_issued(c))
            _check_ca(path[k], below, problems)

    if anchored and not problems:
        if purpose == "client":
            # The verdict the server's handshake and `iotdps explain` reach on the same anchors.
            verdict = verify_client_chain([leaf, *intermediates], roots, when, revoked)
            reasons = verdict.reasons(describe_certificate)
            if reasons:
                problems.append(f"the chain does not validate: {'; '.join(reasons)}")
        else:
            reason = _verifier_error(leaf, intermediates, roots, when, purpose, server_name)
            if reason is not None:
                problems.append(f"the chain does not validate: {reason}")
    if anchored and len(path) > 1:
        extra = [c for c in intermediates if c not in path]
        if extra:
            notes.append(f"{len(extra)} supplied certificate(s) are not part of the chain")
    return ChainReport(valid=anchored and not problems, problems=tuple(problems), notes=tuple(notes), path=tuple(path))


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate] = (),
    roots: Sequence[x509.Certificate] = (),
    *,
    now: dt.datetime | None = None,
    purpose: Purpose = "client",
    check_cn: bool = True,
    server_name: str | None = None,
) -> tuple[x509.Certificate, ...]:
    """Return the validated path (leaf first) or raise ChainError with every reason."""
    report = explain_chain(
        leaf, intermediates, roots, now=now, purpose=purpose, check_cn=check_cn, server_name=server_name
    )
    if not report.valid:
        raise ChainError("; ".join(report.problems))
    return report.path
