"""A TPM in software for fast tests: synthetic EK and SRK whose private keys the test holds.

`SoftTpm.activate` opens an activation blob the way a TPM's ActivateCredential + Import would
(checking every HMAC), so service-side tests run the whole challenge flow in milliseconds. The
proof against a real TPM is swtpm (tests/e2e/tpm); this helper never replaces it there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from iotdps.attestation import tpm_crypto as tc

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography < 47
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[no-redef]

EK_ATTRS = 0x000300B2  # TCG default EK
SRK_ATTRS = 0x00030472  # the Azure SDKs' SRK
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def rsa_tpm2b_public(key: rsa.RSAPrivateKey, attrs: int, policy: bytes = b"") -> bytes:
    """A marshaled TPM2B_PUBLIC of an RSA-2048 restricted decryption key (AES-128-CFB)."""
    n = key.public_key().public_numbers().n
    modulus = n.to_bytes(256, "big")
    tpmt = (
        struct.pack(">HHI", 0x0001, 0x000B, attrs)
        + struct.pack(">H", len(policy))
        + policy
        + struct.pack(">HHH", 0x0006, 128, 0x0043)
        + struct.pack(">H", 0x0010)
        + struct.pack(">HI", 2048, 0)
        + struct.pack(">H", len(modulus))
        + modulus
    )
    return struct.pack(">H", len(tpmt)) + tpmt


@cache
def _pool(index: int) -> rsa.RSAPrivateKey:
    # RSA-2048 generation costs ~50 ms; tests reuse a few keys by index.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _sized(data: bytes) -> tuple[bytes, bytes]:
    (size,) = struct.unpack(">H", data[:2])
    if len(data) < 2 + size:
        raise ValueError("truncated TPM2B")
    return data[2 : 2 + size], data[2 + size :]


def _cfb_decrypt(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), CFB(bytes(16))).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _oaep(private: rsa.RSAPrivateKey, data: bytes, label: bytes) -> bytes:
    return private.decrypt(
        data, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    )


class BlobRefused(Exception):
    """The software TPM refused a blob (an integrity check failed), as a real TPM would."""


@dataclass
class SoftTpm:
    """`index` picks the key pair: SoftTpm(0) and SoftTpm(0) are the same "TPM"."""

    index: int = 0
    id_key: bytes | None = field(default=None, repr=False)

    @property
    def ek_private(self) -> rsa.RSAPrivateKey:
        return _pool(2 * self.index)

    @property
    def srk_private(self) -> rsa.RSAPrivateKey:
        return _pool(2 * self.index + 1)

    @property
    def ek_public(self) -> bytes:
        return rsa_tpm2b_public(self.ek_private, EK_ATTRS, EK_POLICY)

    @property
    def srk_public(self) -> bytes:
        return rsa_tpm2b_public(self.srk_private, SRK_ATTRS)

    @property
    def ek_b64(self) -> str:
        return base64.b64encode(self.ek_public).decode("ascii")

    @property
    def srk_b64(self) -> str:
        return base64.b64encode(self.srk_public).decode("ascii")

    def activate(self, blob_b64: str) -> bytes:
        """ActivateCredential + Import in software; keeps and returns the 32-byte ID key."""
        parts = tc.split_activation_blob(base64.b64decode(blob_b64))
        srk_name = tc.object_name(self.srk_public[2:])
        try:
            seed = _oaep(self.ek_private, _sized(parts.encrypted_secret)[0], b"IDENTITY\x00")
            integrity, enc_identity = _sized(_sized(parts.id_object)[0])
            check = hmac.new(tc.kdfa(seed, b"INTEGRITY", b"", b"", 256), enc_identity + srk_name, hashlib.sha256)
            if not hmac.compare_digest(integrity, check.digest()):
                raise BlobRefused("credential integrity (wrong EK or SRK)")
            inner_key, _ = _sized(_cfb_decrypt(tc.kdfa(seed, b"STORAGE", srk_name, b"", 128), enc_identity))
            name = tc.object_name(parts.id_key_public)
            dup_seed = _oaep(self.srk_private, _sized(parts.encrypted_seed)[0], b"DUPLICATE\x00")
            outer_hmac, dup = _sized(_sized(parts.duplicate)[0])
            check = hmac.new(tc.kdfa(dup_seed, b"INTEGRITY", b"", b"", 256), dup + name, hashlib.sha256)
            if not hmac.compare_digest(outer_hmac, check.digest()):
                raise BlobRefused("duplicate integrity")
            inner = _cfb_decrypt(tc.kdfa(dup_seed, b"STORAGE", name, b"", 128), dup)
            inner_integrity, sensitive = _sized(_cfb_decrypt(inner_key, inner))
            if inner_integrity != hashlib.sha256(sensitive + name).digest():
                raise BlobRefused("inner integrity")
            body, _ = _sized(sensitive)
            _auth, rest = _sized(body[2:])
            _obfuscation, rest = _sized(rest)
            key, _ = _sized(rest)
        except ValueError as exc:  # OAEP failure: encrypted to another key
            raise BlobRefused(str(exc) or "decryption failed") from exc
        self.id_key = key
        return key

    def sign(self, data: bytes) -> bytes:
        """TPM2_HMAC with the imported ID key."""
        if self.id_key is None:
            raise RuntimeError("no ID key imported yet")
        return hmac.new(self.id_key, data, hashlib.sha256).digest()

    def sas(self, id_scope: str, registration_id: str, *, expiry: int | None = None, key: bytes | None = None) -> str:
        """The SAS token a TPM SDK builds, signed with the imported ID key (or `key`)."""
        use = key if key is not None else self.id_key
        if use is None:
            raise RuntimeError("no ID key imported yet")
        sr = quote(f"{id_scope}/registrations/{registration_id}", safe="")
        se = expiry if expiry is not None else int(time.time()) + 3600
        sig = base64.b64encode(tc.sas_signature(use, sr, se)).decode("ascii")
        return f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}&skn=registration"


def tpm_enrollment_doc(registration_id: str, tpm: SoftTpm, **extra: object) -> dict[str, object]:
    """A service-API individual enrollment document for this TPM."""
    return {
        "registrationId": registration_id,
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": tpm.ek_b64, "storageRootKey": tpm.srk_b64}},
        **extra,
    }
