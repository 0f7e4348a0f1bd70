"""Test certificate hierarchies (ECDSA P-256) and the TLS seam's view, for the core's tests.

Loaded by the conftest of each core test folder (tests use importlib mode, so it is put on
sys.path there). NOW is the fixed "present" of every test; certificates are valid around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotdps.attestation.x509 import build_path
from iotdps.evidence import X509Evidence
from iotdps.pki import certs
from iotdps.pki.encoding import load_certificate, sha256_thumbprint
from iotdps.ports import Store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FixedClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return certs.to_pem(self.cert)

    @property
    def sha256(self) -> str:
        return sha256_thumbprint(self.cert)


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=365),
    key: ec.EllipticCurvePrivateKey | None = None,
    basic_constraints: bool = True,
) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if ca:
        # The chain policy wants keyCertSign on every CA below a trust anchor (RFC 5280 4.2.1.3).
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    signer = issuer.key if issuer else key
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Seed004:
    """root -> A -> dev-1..3, root -> B -> dev-4..5 (seed 004's five devices)."""

    root: Issued
    a: Issued
    b: Issued
    devices: dict[str, Issued] = field(default_factory=dict)

    def chain(self, device: str) -> list[x509.Certificate]:
        """What the device presents: its leaf and its intermediate (not the root)."""
        parent = self.a if int(device.split("-")[1]) <= 3 else self.b
        return [self.devices[device].cert, parent.cert]


def seed004() -> Seed004:
    root = issue("root", ca=True)
    a = issue("A", root, ca=True)
    b = issue("B", root, ca=True)
    h = Seed004(root, a, b)
    for i in range(1, 6):
        h.devices[f"dev-{i}"] = issue(f"dev-{i}", a if i <= 3 else b)
    return h


async def tls_anchors(store: Store) -> list[x509.Certificate]:
    """The TLS layer's trust store: verified CAs and individual enrollments' client certs."""
    out: list[x509.Certificate] = []
    async with store.begin() as uow:
        for ca in await uow.cas.list():
            if ca.is_verified:
                out.append(load_certificate(ca.certificate))
        for enrollment in await uow.enrollments.list_x509():
            assert enrollment.attestation.x509 is not None
            for slot in enrollment.attestation.x509.client_certificates:
                if slot is not None:
                    out.append(load_certificate(slot.certificate))
    return out


async def tls_evidence(store: Store, chain: Sequence[x509.Certificate], now: datetime = NOW) -> X509Evidence:
    """Evidence as the TLS layer would hand it over (OpenSSL's verdict imitated in Python)."""
    found = build_path(chain, await tls_anchors(store), now)
    if found.chain is not None:
        return X509Evidence(tuple(chain), found.chain, ())
    return X509Evidence(tuple(chain), None, ("unable to get local issuer certificate",))
