"""A device certificate issued at registration (issue 18), kept beside the cached assignment.

`iotdps device run --csr`: the device makes a P-256 key and a CSR (CN = registration id),
registers with api-version 2025-07-01-preview, and keeps what comes back next to its state file:

    <state>.key.pem      the private key (0600, written before the CSR is sent)
    <state>.chain.pem    issuedCertificateChain: leaf, intermediates, root
    <state>.bundle.pem   the trust bundle's certificates (its root store for the service)

The hub connection then authenticates with the issued certificate. `due_for_renewal` says when
to ask for a new one (over the hub's credentials topic, or by registering again): by default
when less than a third of the validity is left (a 30-day certificate is renewed after 20
days), so an unreachable service has time to come back; `RenewalRule` sets another fraction or
a fixed time before expiry.

Key and chain are replaced as a pair: both are written as `.new` files first, then renamed
into place; a crash between the two renames is finished at the next read (`settle`), and a
crash before both `.new` files exist leaves the old pair, so the key file always belongs to
the chain file.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotdps.device.credentials import X509Files
from iotdps.pki.keys import public_keys_match

__all__ = ["IssuedFiles", "RenewalRule", "due_for_renewal", "new_key_and_csr"]

RENEW_WHEN_LEFT = 1 / 3


@dataclass(frozen=True, slots=True)
class RenewalRule:
    """When a certificate is due: less than `fraction` of its validity left or, when set, less
    than `before` (a fixed time before expiry, which wins over the fraction)."""

    fraction: float = RENEW_WHEN_LEFT
    before: dt.timedelta | None = None

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError("the renewal fraction must lie between 0 and 1")
        if self.before is not None and self.before <= dt.timedelta(0):
            raise ValueError("the renewal time before expiry must be positive")

    def due_at(self, leaf: x509.Certificate) -> dt.datetime:
        """When `leaf` becomes due."""
        if self.before is not None:
            return leaf.not_valid_after_utc - self.before
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        return leaf.not_valid_after_utc - lifetime * self.fraction


def new_key_and_csr(registration_id: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 key and its CSR as the 2025-07-01-preview `csr` field (base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, registration_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return key, base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode("ascii")


def due_for_renewal(leaf: x509.Certificate, now: dt.datetime | None = None, rule: RenewalRule | None = None) -> bool:
    when = now or dt.datetime.now(dt.UTC)
    return when >= (rule or RenewalRule()).due_at(leaf)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _bundle_pem(bundle: dict[str, Any]) -> bytes:
    """The certificates of a `trustBundle` answer as one PEM file (ValueError if it has none)."""
    try:
        pems = "".join(str(c["certificate"]).replace("\r\n", "\n") for c in bundle.get("certificates", []))
        certs = x509.load_pem_x509_certificates(pems.encode("ascii"))
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"the trust bundle does not load: {exc}") from None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """The files beside state file `state`."""

    state: Path

    @property
    def key_file(self) -> Path:
        return self.state.with_name(self.state.name + ".key.pem")

    @property
    def chain_file(self) -> Path:
        return self.state.with_name(self.state.name + ".chain.pem")

    @property
    def bundle_file(self) -> Path:
        return self.state.with_name(self.state.name + ".bundle.pem")

    def _new(self, path: Path) -> Path:
        return path.with_name(path.name + ".new")

    def save(self, key: ec.EllipticCurvePrivateKey, chain_b64: Sequence[str], bundle: dict[str, Any] | None) -> None:
        """Store a freshly issued chain with its key (as a pair, see the module docstring) and
        the trust bundle when one came (else the one kept before stays).
        ValueError when the chain is empty, unreadable or not for `key`."""
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain_b64]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the issued certificate chain does not load: {exc}") from None
        if not chain:
            raise ValueError("the service answered an empty issuedCertificateChain")
        if not public_keys_match(chain[0].public_key(), key.public_key()):
            raise ValueError("the issued certificate does not carry this device's new key")
        bundle_pem = None if bundle is None else _bundle_pem(bundle)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.settle()
        _write(self._new(self.key_file), key_pem, 0o600)
        _write(self._new(self.chain_file), b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain), 0o644)
        self.settle()  # both .new files exist: rename them into place
        if bundle_pem is not None:
            _write(self.bundle_file, bundle_pem, 0o644)

    def settle(self) -> None:
        """Finish or drop a replacement a crash interrupted: a new chain is there (its key
        renamed already or still `.new`), so finish it; a new key without its chain is dropped."""
        new_key, new_chain = self._new(self.key_file), self._new(self.chain_file)
        if new_chain.exists():
            if new_key.exists():
                os.replace(new_key, self.key_file)
            os.replace(new_chain, self.chain_file)
        elif new_key.exists():
            new_key.unlink()

    def leaf(self) -> x509.Certificate | None:
        self.settle()
        try:
            return x509.load_pem_x509_certificates(self.chain_file.read_bytes())[0]
        except (OSError, ValueError, IndexError):
            return None

    def credential(self) -> X509Files | None:
        """The issued certificate as the hub credential, when both files are there."""
        if self.leaf() is None or not self.key_file.exists():
            return None
        return X509Files(self.chain_file, self.key_file)

    def bundle_pem(self) -> str | None:
        try:
            text = self.bundle_file.read_text(encoding="ascii")
        except OSError:
            return None
        return text or None
