"""Device certificates from a precomputed template, for bulk minting.

cryptography's CertificateBuilder spends about three quarters of its time outside the
signature: Python-side builder objects, and a verification of every signature it just made (a
fault-attack guard that costs two ECDSA verifies' worth of CPU per certificate). A factory
batch issues thousands of certificates with one issuer, one validity and one profile, where only
the serial, the CN, the public key and its SKI change. This module encodes that fixed
TBSCertificate once and splices the four fields per device, then signs with the issuer key
(in memory, or through a Signer when the CA key lives in a PKCS#11 token).

The output is byte-for-byte the TBSCertificate that `profiles.issue_device_certificate` builds
for the same inputs (tests compare the two), so the profile has one definition and this is only
a faster encoder of it. The fault-attack re-verification is dropped: it guards RSA-CRT signing
against glitches; ECDSA in OpenSSL does not have that failure mode, and every certificate is
still parsed back and checked in the test suite.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from iotdps.pki.der import content as _content
from iotdps.pki.der import der_to_pem
from iotdps.pki.der import integer as _integer
from iotdps.pki.der import oid as _oid
from iotdps.pki.der import tlv as _tlv
from iotdps.pki.external_signing import verify_signature
from iotdps.pki.issuer import Issuer, Validity, signature_hash
from iotdps.pki.profiles import device_extensions

__all__ = ["DeviceTemplate", "der_to_pem"]


def _key_identifier(spki: bytes) -> bytes:
    """RFC 5280's method (1), as x509.SubjectKeyIdentifier.from_public_key computes it: the
    SHA-1 of the subjectPublicKey BIT STRING's bits, read here from the SubjectPublicKeyInfo
    DER already encoded (from_public_key encoded the key a second time)."""
    body, _ = _content(spki, 0)  # SEQUENCE { AlgorithmIdentifier, BIT STRING }
    _, algorithm_end = _content(spki, body)
    bits, end = _content(spki, algorithm_end)
    return hashlib.sha1(spki[bits + 1 : end], usedforsecurity=False).digest()  # after the unused-bits byte


def _time(when: dt.datetime) -> bytes:
    # RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; seconds, no fraction.
    when = when.astimezone(dt.UTC)
    if 1950 <= when.year < 2050:
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _sig_alg(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        oid = "1.2.840.10045.4.3.3" if key.curve.key_size >= 384 else "1.2.840.10045.4.3.2"
        return _tlv(0x30, _oid(oid))  # ECDSA algorithm identifiers have absent parameters
    # sha256WithRSAEncryption (our RSA issuers always hash with SHA-256, see signature_hash)
    oid = "1.2.840.113549.1.1.11"
    return _tlv(0x30, _oid(oid) + b"\x05\x00")  # RSA PKCS#1 v1.5 carries NULL parameters


def _extension(ext: x509.Extension[x509.ExtensionType]) -> bytes:
    crit = b"\x01\x01\xff" if ext.critical else b""  # DER omits the FALSE default
    return _tlv(0x30, _oid(ext.oid.dotted_string) + crit + _tlv(0x04, ext.value.public_bytes()))


_SKI_OID = _oid(x509.ObjectIdentifier("2.5.29.14").dotted_string)
_CN_OID = _oid("2.5.4.3")
_VERSION_V3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2


def _subject_name(cn: bytes) -> bytes:
    """The Name with one RDN, CN = `cn` (a UTF8String)."""
    return _tlv(0x30, _tlv(0x31, _tlv(0x30, _CN_OID + _tlv(0x0C, cn))))


class DeviceTemplate:
    """The device profile for one issuer and one validity window, ready to stamp out."""

    def __init__(self, issuer: Issuer, validity: Validity, *, rsa_subject: bool = False) -> None:
        if not isinstance(issuer, Issuer) or not isinstance(validity, Validity):
            raise TypeError("DeviceTemplate needs an Issuer and a Validity")
        validity = validity.within(issuer.certificate)
        self._issuer = issuer
        key = issuer.private_key
        self._sig_alg = _sig_alg(key) if key is not None else issuer.signer.algorithm.identifier_der
        self._hash = signature_hash(issuer.key)
        self._checked = False
        self._middle = (
            self._sig_alg
            + issuer.certificate.subject.public_bytes()
            + _tlv(0x30, _time(validity.not_before) + _time(validity.not_after))
        )
        exts = device_extensions(issuer, rsa_subject=rsa_subject)
        # The SKI comes first and varies per device; the extensions after it are constant. An
        # SKI is always 20 bytes, so everything before it (the extensions' lengths) is too.
        self._tail_exts = b"".join(_extension(e) for e in exts)
        self._exts_head = self._extensions(bytes(20))[: -20 - len(self._tail_exts)]
        self._subject_heads: dict[int, bytes] = {}  # CN length -> the subject's DER before the CN
        self.not_after = validity.not_after

    def _extensions(self, ski: bytes) -> bytes:
        return _tlv(0xA3, _tlv(0x30, _tlv(0x30, _SKI_OID + _tlv(0x04, _tlv(0x04, ski))) + self._tail_exts))

    def _subject(self, cn: bytes) -> bytes:
        head = self._subject_heads.get(len(cn))
        if head is None:
            head = self._subject_heads[len(cn)] = _subject_name(bytes(len(cn)))[: -len(cn) or None]
        return head + cn

    def tbs(self, serial: int, registration_id: str, public_key: CertificatePublicKeyTypes) -> bytes:
        """The DER TBSCertificate for one device. The caller validated `registration_id`."""
        spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        # The fixed parts' DER headers come from the template; only the outer lengths are encoded here.
        subject = self._subject(registration_id.encode("utf-8"))
        exts = self._exts_head + _key_identifier(spki) + self._tail_exts
        return _tlv(0x30, _VERSION_V3 + _integer(serial) + self._middle + subject + spki + exts)

    def certificate_der(self, serial: int, registration_id: str, public_key: CertificatePublicKeyTypes) -> bytes:
        tbs = self.tbs(serial, registration_id, public_key)
        key = self._issuer.key
        if isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(tbs, padding.PKCS1v15(), self._hash)
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            sig = key.sign(tbs, ec.ECDSA(self._hash))
        else:
            # A token's key. Its first signature per template is verified with the CA's public
            # key (a URI naming the wrong key, or a token returning garbage, fails the batch at
            # device one); the rest are not, as for file keys above.
            sig = key.sign(tbs)
            if not self._checked:
                verify_signature(key.public_key(), key.algorithm, sig, tbs)
                self._checked = True
        return _tlv(0x30, tbs + self._sig_alg + _tlv(0x03, b"\x00" + sig))
