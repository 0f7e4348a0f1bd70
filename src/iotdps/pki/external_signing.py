"""Signing X.509 objects with a key that cryptography cannot hold (a PKCS#11 token's, say).

cryptography's builders sign only with its own private key types. Certificates, CRLs and CSRs
all share one outer shape, though:

    SEQUENCE { toBeSigned, AlgorithmIdentifier, BIT STRING signature }

so this module lets a builder produce the to-be-signed part, has a `Signer` sign those bytes
wherever its key lives, and assembles the outer DER itself.

To get the to-be-signed bytes, a builder is signed with a throwaway key of the same algorithm
family. The TBSCertificate and TBSCertList do not depend on the signing key except through
their inner signature AlgorithmIdentifier, which depends only on the family and the hash; the
issuer name and AKI are whatever the caller put in the builder (from the real issuer). The
inner AlgorithmIdentifier is checked against the signer's before anything is signed. A CSR's
CertificationRequestInfo has no AlgorithmIdentifier but does carry the signer's own public key
(the builder takes it from the signing key), so that one field is replaced.

Every signature is verified with the signer's public key before the object is returned: a token
that signs with another key than the certificate says, or a wrong r||s conversion, fails here
instead of in a device's TLS stack.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from iotdps.errors import InvalidInput, PkiError

# The DER primitives shared with the bulk template and PKCS#8 (one encoder in the code base).
from iotdps.pki.der import content as _content
from iotdps.pki.der import oid as _oid
from iotdps.pki.der import tlv as _tlv
from iotdps.pki.keys import PrivateKey, public_keys_match

__all__ = [
    "ECDSA_SHA256",
    "ECDSA_SHA384",
    "RSA_PKCS1_SHA256",
    "ReopenableSigner",
    "SignatureAlgorithm",
    "Signer",
    "SignerPublicKey",
    "SoftwareSigner",
    "algorithm_for_public_key",
    "ecdsa_raw_to_der",
    "sign_certificate",
    "sign_crl",
    "sign_csr",
    "signed_der",
    "verify_signature",
]

SignerPublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class SignatureAlgorithm:
    """One X.509 signature algorithm: its OID, its hash, and its AlgorithmIdentifier DER."""

    name: str
    dotted_oid: str
    hash_name: str  # "sha256" | "sha384"
    ecdsa: bool

    @property
    def oid(self) -> x509.ObjectIdentifier:
        return x509.ObjectIdentifier(self.dotted_oid)

    def hash(self) -> hashes.SHA256 | hashes.SHA384:
        return hashes.SHA384() if self.hash_name == "sha384" else hashes.SHA256()

    @property
    def identifier_der(self) -> bytes:
        """The AlgorithmIdentifier: ECDSA's has absent parameters (RFC 5758), RSA's a NULL (RFC 4055)."""
        return _tlv(0x30, _oid(self.dotted_oid) + (b"" if self.ecdsa else b"\x05\x00"))


# The algorithms the toolkit signs with: the hash matches the key's strength, as
# issuer.signature_hash chooses for file keys (RSA issuers always hash with SHA-256).
ECDSA_SHA256 = SignatureAlgorithm("ecdsa-with-SHA256", "1.2.840.10045.4.3.2", "sha256", ecdsa=True)
ECDSA_SHA384 = SignatureAlgorithm("ecdsa-with-SHA384", "1.2.840.10045.4.3.3", "sha384", ecdsa=True)
RSA_PKCS1_SHA256 = SignatureAlgorithm("sha256WithRSAEncryption", "1.2.840.113549.1.1.11", "sha256", ecdsa=False)


def algorithm_for_public_key(key: object) -> SignatureAlgorithm:
    """The signature algorithm a CA with this public key signs with."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_SHA256
        if isinstance(key.curve, ec.SECP384R1):
            return ECDSA_SHA384
        raise InvalidInput(f"a CA key on curve {key.curve.name} is not supported; use P-256 or P-384")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidInput(f"a CA key of RSA {key.key_size} is too small; at least 2048 bits are required")
        return RSA_PKCS1_SHA256
    raise InvalidInput(f"a CA key of type {type(key).__name__} is not supported; use EC or RSA")


@runtime_checkable
class Signer(Protocol):
    """A CA signing key, wherever it lives. `sign` returns the signature as X.509 carries it:
    a DER ECDSA-Sig-Value for ECDSA, the PKCS#1 v1.5 block for RSA."""

    @property
    def algorithm(self) -> SignatureAlgorithm: ...

    def public_key(self) -> SignerPublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class ReopenableSigner(Signer, Protocol):
    """A Signer bound to a per-process session (a PKCS#11 token's): `reopen()` returns the
    same key through a session of the calling process, for a forked worker."""

    def reopen(self) -> Signer: ...


class SoftwareSigner:
    """A Signer over a private key that cryptography holds (a decrypted key file)."""

    __slots__ = ("_algorithm", "_key")

    def __init__(self, key: PrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TypeError("key must be an EC or RSA private key")
        self._key = key
        self._algorithm = algorithm_for_public_key(key.public_key())

    def __repr__(self) -> str:
        return f"SoftwareSigner({self._algorithm.name})"

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    def public_key(self) -> SignerPublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), self._algorithm.hash())
        return self._key.sign(data, ec.ECDSA(self._algorithm.hash()))


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """PKCS#11's ECDSA output (r || s, each the width of the curve order) as the DER
    ECDSA-Sig-Value that X.509 and TLS carry."""
    if not raw or len(raw) % 2:
        raise PkiError(f"the token returned a malformed ECDSA signature ({len(raw)} bytes)")
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def verify_signature(public_key: SignerPublicKey, algorithm: SignatureAlgorithm, signature: bytes, data: bytes) -> None:
    """Raise PkiError unless `signature` is `public_key`'s signature of `data`."""
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm.hash())
        else:
            public_key.verify(signature, data, ec.ECDSA(algorithm.hash()))
    except InvalidSignature:
        raise PkiError("the signing key produced a signature its public key does not verify") from None


def _elements(der: bytes) -> list[tuple[int, int]]:
    """(start, end) of each element inside the outer SEQUENCE of `der`."""
    start, end = _content(der, 0)
    if der[0] != 0x30 or end != len(der):
        raise PkiError("the to-be-signed structure is not one DER SEQUENCE")
    out: list[tuple[int, int]] = []
    at = start
    while at < end:
        _, nxt = _content(der, at)
        out.append((at, nxt))
        at = nxt
    return out


def signed_der(tbs: bytes, signer: Signer, *, verify: bool = True) -> bytes:
    """SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING } with `signer`'s signature of `tbs`:
    the DER of a Certificate, CertificateList or CertificationRequest, by what `tbs` is."""
    algorithm = signer.algorithm
    signature = signer.sign(tbs)
    if verify:
        verify_signature(signer.public_key(), algorithm, signature, tbs)
    return _tlv(0x30, tbs + algorithm.identifier_der + _tlv(0x03, b"\x00" + signature))


# Throwaway keys that only make the builders produce their to-be-signed bytes; the signatures
# they make are discarded. One of each family per process: an RSA key takes ~100 ms to make.
_THROWAWAY: dict[bool, PrivateKey] = {}
_THROWAWAY_LOCK = threading.Lock()


def _throwaway(algorithm: SignatureAlgorithm) -> PrivateKey:
    with _THROWAWAY_LOCK:
        key = _THROWAWAY.get(algorithm.ecdsa)
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1()) if algorithm.ecdsa else rsa.generate_private_key(65537, 2048)
            _THROWAWAY[algorithm.ecdsa] = key
        return key


def _check_inner_algorithm(tbs: bytes, index: int, algorithm: SignatureAlgorithm, what: str) -> None:
    """The AlgorithmIdentifier inside a TBS (element `index`) must be the signer's, or the
    outer and inner identifiers would disagree and every verifier would refuse the object."""
    start, end = _elements(tbs)[index]
    if tbs[start:end] != algorithm.identifier_der:
        raise PkiError(f"the {what} names another signature algorithm than {algorithm.name}")


def _check_issuer(signer: Signer, issuer_name: x509.Name, issuer: x509.Certificate | None, what: str) -> None:
    """With the CA certificate at hand, catch a key that is not the CA's (a URI naming the
    wrong object) and an issuer name that is not the CA's, before the token signs anything."""
    if issuer is None:
        return
    if issuer_name != issuer.subject:
        raise PkiError(f"the {what}'s issuer name is not the subject of the CA certificate")
    if not public_keys_match(signer.public_key(), issuer.public_key()):
        raise PkiError(f"the signing key is not the key of the CA certificate {issuer.subject.rfc4514_string()!r}")


def sign_certificate(
    builder: x509.CertificateBuilder, signer: Signer, *, issuer: x509.Certificate | None = None
) -> x509.Certificate:
    """The certificate `builder` describes, signed by `signer` (the key of CA `issuer`, if given;
    leave it out for a self-signed root).

    The builder's issuer name and AKI must already be the real issuer's (the profiles set both
    from the issuer certificate); nothing of the throwaway key ends up in the certificate.
    """
    algorithm = signer.algorithm
    draft = builder.sign(_throwaway(algorithm), algorithm.hash())
    _check_issuer(signer, draft.issuer, issuer, "certificate")
    tbs = draft.tbs_certificate_bytes
    # TBSCertificate: [0] version, serialNumber, signature AlgorithmIdentifier, ...
    _check_inner_algorithm(tbs, 2, algorithm, "TBSCertificate")
    return x509.load_der_x509_certificate(signed_der(tbs, signer))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer, *, issuer: x509.Certificate | None = None
) -> x509.CertificateRevocationList:
    """The CRL `builder` describes, signed by `signer` (the key of CA `issuer`, if given). As
    for certificates, the builder's issuer name and AKI extension come from the real issuer."""
    algorithm = signer.algorithm
    draft = builder.sign(_throwaway(algorithm), algorithm.hash())
    _check_issuer(signer, draft.issuer, issuer, "CRL")
    tbs = draft.tbs_certlist_bytes
    # TBSCertList: version (v2, which cryptography always writes), signature, issuer, ...
    first, _ = _elements(tbs)[0]
    _check_inner_algorithm(tbs, 1 if tbs[first] == 0x02 else 0, algorithm, "TBSCertList")
    return x509.load_der_x509_crl(signed_der(tbs, signer))


def sign_csr(builder: x509.CertificateSigningRequestBuilder, signer: Signer) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for `signer`'s public key, signed by it (proof of possession).

    The builder puts the signing key's public key into the CertificationRequestInfo, so the
    throwaway's SubjectPublicKeyInfo (element 2: version, subject, subjectPKInfo, attributes)
    is replaced by the signer's.
    """
    algorithm = signer.algorithm
    draft = builder.sign(_throwaway(algorithm), algorithm.hash())
    cri = draft.tbs_certrequest_bytes
    spki = signer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    parts = _elements(cri)
    if len(parts) != 4:
        raise PkiError("the CertificationRequestInfo does not have its four fields")
    (v0, v1), (s0, s1), _, (a0, a1) = parts
    tbs = _tlv(0x30, cri[v0:v1] + cri[s0:s1] + spki + cri[a0:a1])
    return x509.load_der_x509_csr(signed_der(tbs, signer))
