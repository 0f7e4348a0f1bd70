"""Hand-made X.509 certificates for the attack matrix: anything a hostile or careless factory
could mint, including what our own CLI refuses to make (CA:TRUE device certificates, unknown
critical extensions, RSA-1024, SHA-1 signatures, forged issuers).

`make` builds one certificate; `Cert` carries it with its key and writes PEM files. SHA-1 and
MD5 signatures: cryptography no longer signs with them, so `weak_signed` re-signs an RSA-signed
certificate by hand (same TBS with the algorithm identifier swapped, a PKCS#1 v1.5 signature
over it, the outer structure re-assembled in DER).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CLIENT", "Cert", "KeyKind", "ku", "make", "new_key", "pem", "weak_signed", "write_bundle"]

KeyKind = Literal["p256", "p384", "p521", "brainpool", "rsa1024", "rsa2048", "ed25519"]
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
_DEVICE_KU = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
_CA_KU = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


def new_key(kind: KeyKind = "p256") -> Key:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "brainpool":
        return ec.generate_private_key(ec.BrainpoolP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(65537, 1024 if kind == "rsa1024" else 2048)


@dataclass(frozen=True)
class Cert:
    cert: x509.Certificate
    key: Key

    @property
    def cn(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def write(self, directory: Path, chain: Sequence[x509.Certificate] = ()) -> tuple[Path, Path]:
        """`<cn>.cert.pem` (this certificate, then `chain`) and `<cn>.key.pem`, unencrypted."""
        cert_file = write_bundle(directory / f"{self.cn}.cert.pem", [self.cert, *chain])
        key_file = directory / f"{self.cn}.key.pem"
        key_file.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_file, key_file


def pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def write_bundle(path: Path, certs: Sequence[x509.Certificate]) -> Path:
    path.write_text(pem(certs))
    return path


def make(
    cn: str,
    issuer: Cert | None,
    *,
    key: Key | None = None,
    ca: bool = False,
    path_length: int | None = None,
    basic_constraints: bool = True,
    key_usage: x509.KeyUsage | Literal["default"] | None = "default",
    eku: Sequence[x509.ObjectIdentifier] | Literal["default"] | None = "default",
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    subject: x509.Name | None = None,
    issuer_name: x509.Name | None = None,
    authority_key_id: bytes | None = None,
    subject_key_id: bytes | None = None,
    signing_key: Key | None = None,
    pss_salt: int | None = None,
) -> Cert:
    """One certificate. Defaults: P-256, valid from a day ago for 30 days, SKI and AKI, critical
    basic constraints, key usage (devices: digitalSignature; CAs: keyCertSign + cRLSign), EKU
    clientAuth for devices and none for CAs (`eku=None` leaves it out), SHA-256. `issuer` None: self-signed.
    The forgery knobs: `issuer_name`, `authority_key_id`, `subject_key_id` and `signing_key`
    override what the issuer would put there. `pss_salt`: sign RSASSA-PSS (SHA-256, MGF1-SHA-256)
    with this salt length (the issuer key must be RSA)."""
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = signing_key or (issuer.key if issuer else key)
    issuer_public = (issuer.key if issuer else key).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or (issuer.cert.subject if issuer else name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectKeyIdentifier(subject_key_id)
            if subject_key_id is not None
            else x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier(authority_key_id, None, None)
            if authority_key_id is not None
            else x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if key_usage == "default":
        key_usage = _CA_KU if ca else _DEVICE_KU
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku == "default":
        eku = None if ca else CLIENT
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    for value, critical in extra:
        builder = builder.add_extension(value, critical=critical)
    algorithm: Any = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    if pss_salt is not None:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=pss_salt)
        return Cert(builder.sign(signer, algorithm, rsa_padding=pss), key)
    return Cert(builder.sign(signer, algorithm), key)


def ku(*, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature, False, key_encipherment, False, False, cert_sign, cert_sign, False, False)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


_SHA256_WITH_RSA = bytes.fromhex("06092a864886f70d01010b")  # the OID, DER-encoded
_WEAK = {
    "sha1": (bytes.fromhex("06092a864886f70d010105"), hashes.SHA1()),  # noqa: S303 - forging on purpose
    "md5": (bytes.fromhex("06092a864886f70d010104"), hashes.MD5()),  # noqa: S303
}


def weak_signed(cert: Cert, issuer_key: Key, weak: Literal["sha1", "md5"] = "sha1") -> Cert:
    """`cert` (signed sha256WithRSAEncryption by the RSA `issuer_key`) signed again with SHA-1 or
    MD5: both OIDs have the same length as SHA-256's, so the TBS keeps its DER lengths."""
    if not isinstance(issuer_key, rsa.RSAPrivateKey):
        raise TypeError("weak_signed needs an RSA issuer key")
    oid, algorithm = _WEAK[weak]
    tbs = cert.cert.tbs_certificate_bytes
    if tbs.count(_SHA256_WITH_RSA) != 1:
        raise ValueError("the certificate is not signed sha256WithRSAEncryption")
    tbs = tbs.replace(_SHA256_WITH_RSA, oid)
    signature = issuer_key.sign(tbs, padding.PKCS1v15(), algorithm)
    outer = _tlv(0x30, tbs + _tlv(0x30, oid + b"\x05\x00") + _tlv(0x03, b"\x00" + signature))
    return Cert(x509.load_der_x509_certificate(outer), cert.key)
