"""Certificate revocation: CRLs made by a CA, CRLs checked on upload, and what is revoked.

One model (the README's "Key custody" says it for operators): revocations live in CRLs, one per
CA, signed by that CA's key. The CA directory (the root's offline machine, a factory) records
what it revoked and signs the CRL (`build_crl`, through the toolkit's Signer when the key is in
a token). The service never holds CA keys, so it cannot sign a CRL; it holds the latest CRL of
each uploaded CA, checked against that CA's certificate on upload (`check_crl`), and enforces
the union of them (`Revocations`), at the TLS handshake, in `explain`, in `cert verify` and at
the hub.

How a certificate is matched: by serial number (a dictionary look-up, the only cost on the
handshake path for a certificate nobody revoked), then by issuer name, then by the issuer's key:
the CRL's signer must be the key of the certificate above it on the path, or, at the top of a
path (the trust anchor, whose issuer is not on it), the certificate's authority key identifier
must name that key when it has one.

A revoked CA takes every certificate under it along, whichever CA ends the path. When the
revoked CA is on the path, its own entry refuses the path. When it is above the path's trust
anchor (root -> factory -> line, with line the anchor and factory revoked by the root's CRL),
`Revocations.build` has already walked each known CA certificate up to its root and given every
CA below a revoked one an entry of its own ("under revoked CA ...").

Expired CRLs (past nextUpdate): their entries are still enforced. A revocation is permanent
(iotdps never writes removeFromCRL or certificateHold), so a stale CRL still proves what it
lists; what it cannot prove is that nothing was revoked since. Failing closed would refuse a
whole factory's devices because an offline root missed its CRL refresh; failing open would
re-admit a compromised line by the mere passing of time. So the service keeps enforcing, and
reports the CRL as expired (`iotdps crl list`, the API, a warning on every trust reload).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotdps.errors import InvalidInput
from iotdps.pki.certs import certificate_label, is_self_issued, signed_by
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.pki.external_signing import sign_crl
from iotdps.pki.issuer import Issuer, signature_hash

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_CRL_DAYS",
    "NO_REVOCATIONS",
    "REASONS",
    "CrlSummary",
    "RevocationHit",
    "Revocations",
    "RevokedEntry",
    "build_crl",
    "check_crl",
    "crl_der",
    "crl_number",
    "crl_pem",
    "load_crl",
    "parse_reason",
    "summarize",
    "walk_up",
]

DEFAULT_CRL_DAYS = 7
# A CRL dated a little ahead of our clock is still accepted (the signer's clock may run ahead).
CLOCK_SKEW = dt.timedelta(minutes=5)
# The RFC 5280 reason codes an operator may give, by their RFC names.
REASONS: Mapping[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_REASON_NAMES = {flag: name for name, flag in REASONS.items()}
_MAX_CRL_BYTES = 8 * 1024 * 1024


def parse_reason(text: str) -> x509.ReasonFlags:
    """An operator's reason word (case-insensitive RFC name) as the CRL's reason code."""
    for name, flag in REASONS.items():
        if isinstance(text, str) and text.lower() == name.lower():
            return flag
    raise InvalidInput(f"unknown revocation reason {text!r}; one of: {', '.join(REASONS)}")


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One certificate a CA revoked: what goes in its CRL."""

    serial: int
    revoked_at: dt.datetime
    reason: str = "unspecified"
    subject: str = ""  # for operators' listings only; CRLs carry no names


def _serial_in_range(serial: int) -> int:
    if isinstance(serial, bool) or not isinstance(serial, int) or serial <= 0 or serial.bit_length() > 159:
        raise InvalidInput("a serial number is a positive integer of at most 20 octets")
    return serial


def build_crl(
    issuer: Issuer,
    entries: Sequence[RevokedEntry],
    *,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> x509.CertificateRevocationList:
    """The CRL of CA `issuer` listing `entries`, signed by its key (in memory or a token)."""
    if next_update <= this_update:
        raise InvalidInput("a CRL's nextUpdate must be after its thisUpdate")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(issuer.authority_key_identifier, critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in entries:
        revoked = x509.RevokedCertificateBuilder().serial_number(_serial_in_range(entry.serial))
        revoked = revoked.revocation_date(entry.revoked_at)
        flag = parse_reason(entry.reason)
        # RFC 5280 5.3.1: "unspecified" SHOULD be expressed by leaving the extension out.
        if flag is not x509.ReasonFlags.unspecified:
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    key = issuer.private_key
    if key is not None:
        return builder.sign(key, signature_hash(key))
    return sign_crl(builder, issuer.signer, issuer=issuer.certificate)


def load_crl(data: bytes | str) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER (text: PEM, or DER as base64, as the API carries it); InvalidInput
    with one clear sentence otherwise."""
    if isinstance(data, str):
        text = data.strip()
        if "-----BEGIN" in text:
            raw = text.encode("ascii", "replace")
        else:
            try:
                raw = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                raise InvalidInput("not a CRL: expected PEM, or DER as base64") from None
    else:
        raw = bytes(data)
    if len(raw) > _MAX_CRL_BYTES:
        raise InvalidInput(f"the CRL is larger than {_MAX_CRL_BYTES // (1024 * 1024)} MiB")
    try:
        if b"-----BEGIN X509 CRL-----" in raw:
            return x509.load_pem_x509_crl(raw)
        return x509.load_der_x509_crl(raw)
    except ValueError:
        raise InvalidInput("not a CRL: expected a PEM 'X509 CRL' block or DER") from None


def crl_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (x509.ExtensionNotFound, ValueError):
        return None


def check_crl(crl: x509.CertificateRevocationList, ca: x509.Certificate, now: dt.datetime) -> None:
    """Raise InvalidInput unless `crl` is CA `ca`'s: its issuer, signed by its key, with a
    nextUpdate, not dated in the future. An expired CRL passes (see the module docstring); the
    caller reports it."""
    label = certificate_label(ca)
    if crl.issuer != ca.subject:
        raise InvalidInput(f"the CRL was issued by {crl.issuer.rfc4514_string()}, not by {label}")
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidInput(f"{label} has a key type that cannot sign CRLs here")
    try:
        valid = crl.is_signature_valid(key)
    except (ValueError, TypeError):  # an algorithm the key cannot verify
        valid = False
    if not valid:
        raise InvalidInput(f"the CRL is not signed by the key of {label} (signed by another key, or altered)")
    try:
        ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.crl_sign:
            raise InvalidInput(f"{label} may not sign CRLs (its keyUsage lacks cRLSign)")
    except x509.ExtensionNotFound:
        pass
    try:
        for ext in crl.extensions:
            # An unknown critical CRL extension (delta CRL indicator, issuing distribution point
            # scopes) changes what the CRL means: refuse rather than misread it.
            if ext.critical:
                raise InvalidInput(
                    f"the CRL has a critical extension iotdps does not interpret ({ext.oid.dotted_string})"
                )
        for revoked in crl:
            for ext in revoked.extensions:
                if ext.critical:
                    raise InvalidInput("a CRL entry has a critical extension iotdps does not interpret")
    except (ValueError, x509.DuplicateExtension):
        raise InvalidInput("the CRL has extensions that cannot be read") from None
    if crl.next_update_utc is None:
        raise InvalidInput("the CRL has no nextUpdate (RFC 5280 requires one)")
    if crl.last_update_utc > now + CLOCK_SKEW:
        raise InvalidInput(f"the CRL is dated {crl.last_update_utc:%Y-%m-%d %H:%M:%SZ}, in the future")


@dataclass(frozen=True, slots=True)
class CrlSummary:
    """What operators see of a CRL."""

    number: int | None
    this_update: dt.datetime
    next_update: dt.datetime | None
    revoked: int

    def expired(self, now: dt.datetime) -> bool:
        return self.next_update is not None and now > self.next_update


def summarize(crl: x509.CertificateRevocationList) -> CrlSummary:
    return CrlSummary(crl_number(crl), crl.last_update_utc, crl.next_update_utc, len(crl))


# ---------------------------------------------------------------------------- enforcement


@dataclass(frozen=True, slots=True)
class _Entry:
    issuer: x509.Name
    signer_key: bytes  # SubjectPublicKeyInfo DER of the CA that signed the CRL
    signer_ski: bytes | None
    ca_label: str
    reason: str
    revoked_at: dt.datetime | None
    under: str | None = None  # set on an entry derived from a revoked CA above this one
    under_sha256: str | None = None  # that revoked CA's SHA-256 thumbprint


@dataclass(frozen=True, slots=True)
class RevocationHit:
    """The first revoked certificate of a path, for records (`provisioning.record_view`).

    `depth`: 0 the leaf, else the CA at that depth of the path; `ca_sha256`: the thumbprint of
    the revoked CA (the one on the path, or the revoked CA above its anchor), None for a leaf."""

    depth: int
    reason: str
    revoked_at: dt.datetime | None
    ca_sha256: str | None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return None


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return None


def _reason_of(revoked: x509.RevokedCertificate) -> str:
    try:
        flag = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return "unspecified"
    return _REASON_NAMES.get(flag, flag.value)


class Revocations:
    """Every certificate revoked by the CRLs the service holds, looked up by serial number.

    Immutable; the service builds a new one when a CRL or CA changes. `fingerprint` tells two
    sets apart without comparing them entry by entry."""

    def __init__(self, by_serial: Mapping[int, tuple[_Entry, ...]], fingerprint: frozenset[tuple[bytes, int]]) -> None:
        self._by_serial = dict(by_serial)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.fingerprint)

    def __repr__(self) -> str:
        return f"Revocations({len(self)} certificates)"

    @classmethod
    def build(
        cls,
        crls: Iterable[tuple[str, x509.Certificate, x509.CertificateRevocationList]],
        known_cas: Iterable[x509.Certificate] = (),
    ) -> Revocations:
        """From (CA name, CA certificate, its checked CRL) triples; `known_cas` (uploaded CA
        certificates) are walked up so that a CA under a revoked one is revoked too."""
        table: dict[int, list[_Entry]] = {}
        for name, ca, crl in crls:
            key, ski = _spki(ca), _ski(ca)
            for revoked in crl:
                entry = _Entry(ca.subject, key, ski, name, _reason_of(revoked), revoked.revocation_date_utc)
                table.setdefault(revoked.serial_number, []).append(entry)
        direct = cls(
            {s: tuple(e) for s, e in table.items()},
            frozenset((e.signer_key, s) for s, es in table.items() for e in es),
        )
        if not table:
            return direct
        cas = list(dict.fromkeys(known_cas))
        derived: dict[int, list[_Entry]] = {}
        for ca in cas:
            path = walk_up(ca, cas)
            for depth in range(1, len(path)):
                above = direct._entry(path[depth], path[depth + 1] if depth + 1 < len(path) else None)
                if above is not None:
                    issuer = path[1]
                    under = certificate_label(path[depth])
                    # The revoked CA's own reason and date: what records show (RevocationHit).
                    entry = _Entry(
                        ca.issuer,
                        _spki(issuer),
                        _ski(issuer),
                        "",
                        above.reason,
                        above.revoked_at,
                        under,
                        sha256_thumbprint(path[depth]),
                    )
                    derived.setdefault(ca.serial_number, []).append(entry)
                    break
        if not derived:
            return direct
        merged = {s: tuple(table.get(s, ())) + tuple(derived.get(s, ())) for s in {*table, *derived}}
        fingerprint = direct.fingerprint | frozenset((e.signer_key, s) for s, es in derived.items() for e in es)
        return cls(merged, fingerprint)

    def _entry(self, cert: x509.Certificate, issuer: x509.Certificate | None) -> _Entry | None:
        entries = self._by_serial.get(cert.serial_number)
        if not entries:
            return None
        for entry in entries:
            if entry.issuer != cert.issuer:
                continue
            if issuer is not None:
                if _spki(issuer) != entry.signer_key:
                    continue
            else:
                aki = _aki(cert)
                if aki is not None and entry.signer_ski is not None and aki != entry.signer_ski:
                    continue
            return entry
        return None

    def problem(self, cert: x509.Certificate, issuer: x509.Certificate | None) -> str | None:
        """Words (naming the certificate as `{cert}`) when `cert` is revoked, else None.

        `issuer`: the certificate above it on the path, or None at the top of the path."""
        entry = self._entry(cert, issuer)
        if entry is None:
            return None
        if entry.under is not None:
            return f"{{cert}} is under the revoked CA {entry.under}"
        when = f" on {entry.revoked_at:%Y-%m-%d %H:%M:%SZ}" if entry.revoked_at is not None else ""
        return f"{{cert}} was revoked by CA {entry.ca_label}{when} (reason: {entry.reason})"

    def first_hit(self, path: Sequence[x509.Certificate]) -> RevocationHit | None:
        """The first revoked certificate of `path` (leaf first, each certificate's issuer the
        next one), or None: the same matching as `path_problems`, as data."""
        if not self._by_serial:
            return None
        for depth, cert in enumerate(path):
            entry = self._entry(cert, path[depth + 1] if depth + 1 < len(path) else None)
            if entry is None:
                continue
            if entry.under_sha256 is not None:
                ca_sha256: str | None = entry.under_sha256
            else:
                ca_sha256 = sha256_thumbprint(cert) if depth > 0 else None
            return RevocationHit(depth, entry.reason, entry.revoked_at, ca_sha256)
        return None

    def path_problems(self, path: Sequence[x509.Certificate]) -> list[tuple[int, x509.Certificate, str]]:
        """(depth, certificate, words) for each revoked certificate of `path` (leaf first)."""
        if not self._by_serial:
            return []
        out = []
        for depth, cert in enumerate(path):
            words = self.problem(cert, path[depth + 1] if depth + 1 < len(path) else None)
            if words is not None:
                out.append((depth, cert, words))
        return out

    def presented_problems(self, presented: Sequence[x509.Certificate]) -> list[tuple[int, x509.Certificate, str]]:
        """As `path_problems`, for a chain as a device sent it (nobody verified it): each
        certificate's issuer is the next one only if it really signed it."""
        if not self._by_serial:
            return []
        out = []
        for depth, cert in enumerate(presented):
            nxt = presented[depth + 1] if depth + 1 < len(presented) else None
            issuer = nxt if nxt is not None and signed_by(cert, nxt) else None
            words = self.problem(cert, issuer)
            if words is not None:
                out.append((depth, cert, words))
        return out


def walk_up(start: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """`start`, then its issuer among `pool` (signature-checked), and so on to a root."""
    path = [start]
    for _ in range(len(pool) + 1):
        current = path[-1]
        if is_self_issued(current) and signed_by(current, current):
            break
        parent = next((c for c in pool if c not in path and signed_by(current, c)), None)
        if parent is None:
            break
        path.append(parent)
    return path


NO_REVOCATIONS = Revocations({}, frozenset())
