"""What a device presented, as evidence for attestation: its TLS peer, a SAS token, TPM keys.

The TLS seam (`server/tls.py`) produces a `PeerIdentity` at the end of every handshake; the DPS
edges turn it, or a SAS token, or a TPM device's keys, into a `Credential`; attestation decides
on that, and the hub checks a `PeerIdentity` at CONNECT. These types do no I/O and sit on the
floor, so the edges and the hub need neither attestation nor the TLS engine to speak of them.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from cryptography import x509

from iotdps.secret import Secret

__all__ = [
    "VERIFY_WORDS",
    "Credential",
    "PeerIdentity",
    "SasCredential",
    "TpmEvidence",
    "VerifyCode",
    "VerifyError",
    "X509Evidence",
]


# --------------------------------------------------------------------------- the TLS peer


class VerifyCode(enum.IntEnum):
    """OpenSSL's X509_V_ERR_* numbers that devices meet in practice.

    The numbers are those of OpenSSL 3.x/4.x (x509_vfy.h); they are not all the same as in 1.1
    (INVALID_CA moved from 24 to 79), so a unit test checks them against the bundled OpenSSL.
    Codes not listed here are still recorded, with OpenSSL's own text.
    """

    UNABLE_TO_GET_ISSUER_CERT = 2
    UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY = 6
    CERT_SIGNATURE_FAILURE = 7
    CERT_NOT_YET_VALID = 9
    CERT_HAS_EXPIRED = 10
    ERROR_IN_CERT_NOT_BEFORE_FIELD = 13
    ERROR_IN_CERT_NOT_AFTER_FIELD = 14
    DEPTH_ZERO_SELF_SIGNED_CERT = 18
    SELF_SIGNED_CERT_IN_CHAIN = 19
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
    UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
    CERT_CHAIN_TOO_LONG = 22
    CERT_REVOKED = 23
    PATH_LENGTH_EXCEEDED = 25
    INVALID_PURPOSE = 26
    CERT_UNTRUSTED = 27
    CERT_REJECTED = 28
    KEYUSAGE_NO_CERTSIGN = 32
    INVALID_EXTENSION = 41
    EE_KEY_TOO_SMALL = 66
    CA_KEY_TOO_SMALL = 67
    CA_MD_TOO_WEAK = 68
    INVALID_CA = 79


# Plain words for operators, by code.
VERIFY_WORDS: dict[int, str] = {
    VerifyCode.UNABLE_TO_GET_ISSUER_CERT: "the certificate's issuer is not a known CA",
    VerifyCode.UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: "the issuer's public key could not be read",
    VerifyCode.CERT_SIGNATURE_FAILURE: "the certificate's signature does not verify",
    VerifyCode.CERT_NOT_YET_VALID: "the certificate is not valid yet (check the device clock)",
    VerifyCode.CERT_HAS_EXPIRED: "the certificate has expired",
    VerifyCode.ERROR_IN_CERT_NOT_BEFORE_FIELD: "the certificate's start date is malformed",
    VerifyCode.ERROR_IN_CERT_NOT_AFTER_FIELD: "the certificate's expiry date is malformed",
    VerifyCode.DEPTH_ZERO_SELF_SIGNED_CERT: "the certificate is self-signed and not enrolled",
    VerifyCode.SELF_SIGNED_CERT_IN_CHAIN: "the chain ends in a self-signed CA that is not trusted",
    VerifyCode.UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "the certificate's issuer is not a known or verified CA",
    VerifyCode.UNABLE_TO_VERIFY_LEAF_SIGNATURE: "the certificate's issuer is not a known or verified CA",
    VerifyCode.CERT_CHAIN_TOO_LONG: "the certificate chain is too long",
    VerifyCode.CERT_REVOKED: "the certificate has been revoked",
    VerifyCode.INVALID_CA: "a certificate in the chain is not allowed to act as a CA",
    VerifyCode.PATH_LENGTH_EXCEEDED: "the chain is longer than a CA's path length allows",
    VerifyCode.INVALID_PURPOSE: "the certificate is not allowed for client authentication",
    VerifyCode.CERT_UNTRUSTED: "the certificate is not trusted for this purpose",
    VerifyCode.CERT_REJECTED: "the certificate is rejected for this purpose",
    VerifyCode.KEYUSAGE_NO_CERTSIGN: "an issuer in the chain may not sign certificates",
    VerifyCode.INVALID_EXTENSION: "a certificate carries an invalid or inconsistent extension",
    VerifyCode.EE_KEY_TOO_SMALL: "the certificate's key is too small",
    VerifyCode.CA_KEY_TOO_SMALL: "a CA key in the chain is too small",
    VerifyCode.CA_MD_TOO_WEAK: "a signature in the chain uses a hash that is too weak",
}


@dataclass(frozen=True, slots=True)
class VerifyError:
    """One complaint OpenSSL (or the chain policy) raised about the client's chain.

    `depth` 0 is the leaf. `message` is OpenSSL's own text; `reason` says it in plain words.
    `policy`: raised by the service's chain policy on a chain OpenSSL accepted (or on the leaf
    of one it did not); `code` is then the nearest OpenSSL code and `message` names the rule.
    """

    depth: int
    code: int
    message: str
    subject: str
    certificate: x509.Certificate | None = field(default=None, compare=False, repr=False)
    policy: bool = False

    @property
    def reason(self) -> str:
        if self.policy:
            return self.message
        # `message` is OpenSSL's own text for the code: the words when there are none of ours.
        words = VERIFY_WORDS.get(self.code)
        return words if words is not None else f"certificate verification failed: {self.message}"

    def __str__(self) -> str:
        return f"depth {self.depth} ({self.subject}): {self.reason}"


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a finished TLS handshake.

    `chain` is what the client presented, leaf first, in its order. `verified_chain` is the
    path OpenSSL built from the leaf to one of our anchors, set only when verification
    succeeded (no errors); it ends at the anchor that vouched for the device, which is how the
    enrollment lookup finds the nearest verified CA.
    """

    chain: tuple[x509.Certificate, ...]
    verified_chain: tuple[x509.Certificate, ...] | None
    verify_errors: tuple[VerifyError, ...]
    server_name: str | None
    tls_version: str
    cipher: str
    # time.monotonic() when the handshake finished: which trust anchors it was checked against.
    handshake_at: float = field(default_factory=time.monotonic)

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @property
    def ok(self) -> bool:
        """The client presented a certificate and OpenSSL found nothing wrong with its chain."""
        return bool(self.chain) and not self.verify_errors and self.verified_chain is not None

    def explain(self) -> str:
        """One line for operators: why this peer is not trusted, or that it is."""
        if not self.chain:
            return "the device presented no client certificate"
        if self.ok:
            return "the certificate chain verified"
        if not self.verify_errors:
            return "the certificate chain did not verify"
        return "; ".join(str(e) for e in self.verify_errors)


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class X509Evidence:
    """What the TLS layer saw. `verified` is None when OpenSSL did not verify the chain."""

    presented: tuple[x509.Certificate, ...]
    verified: tuple[x509.Certificate, ...] | None = None
    errors: tuple[str, ...] = ()

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.presented[0] if self.presented else None


@dataclass(frozen=True, slots=True)
class SasCredential:
    """The SAS token a device sent (MQTT password or HTTP Authorization header), as received."""

    token: Secret[str]


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    """What a TPM device sends with its register request (base64 TPM2B_PUBLIC blobs) and, in
    answer to the service's challenge, the SAS token its TPM signed (None: it asks for one)."""

    endorsement_key: str
    storage_root_key: str | None = None
    sas: Secret[str] | None = None


Credential = X509Evidence | SasCredential | TpmEvidence
