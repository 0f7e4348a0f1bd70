"""Encrypted PKCS#8 with a work factor we choose: PBES2 (RFC 8018) with scrypt (RFC 7914) and
AES-256-CBC.

Why our own encoder: `cryptography` writes encrypted PKCS#8 only through
`BestAvailableEncryption`, which fixes PBKDF2-SHA256 at 2,048 iterations (OpenSSL's old
default), and its `encryption_builder()` (where `kdf_rounds` lives) is offered for OpenSSH and
PKCS#12 only, not PKCS#8. The structure is small and fixed, so it is written here with a
minimal DER writer (pki.der); reading stays with `cryptography`, which understands scrypt and PBKDF2,
so keys written before this change load as they always did.

Parameters: scrypt N = 2^14, r = 8, p = 5. That is the OWASP Password Storage Cheat Sheet's
scrypt setting for a 16 MiB memory budget (equivalent to N = 2^17, p = 1). The memory budget is
the binding constraint: OpenSSL (which `cryptography` and the `openssl` command use to decrypt)
refuses scrypt above 32 MiB when reading PKCS#8, so a larger N would write keys nobody can read.
Cost: ~0.25 s per encryption or decryption on one core, once per command that loads a CA key.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from iotdps.pki.der import integer, octets, oid, sequence

__all__ = ["SCRYPT_N", "SCRYPT_P", "SCRYPT_R", "encrypt_pkcs8"]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 5
_SALT_BYTES = 16
_KEY_BYTES = 32  # AES-256

_OID_PBES2 = "1.2.840.113549.1.5.13"
_OID_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"


def encrypt_pkcs8(
    private_key_info: bytes, passphrase: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> bytes:
    """DER EncryptedPrivateKeyInfo (RFC 5958) of the DER PrivateKeyInfo `private_key_info`:
    PBES2 with scrypt and AES-256-CBC, a fresh 16-byte salt and IV each time."""
    salt = os.urandom(_SALT_BYTES)
    iv = os.urandom(16)
    key = Scrypt(salt=salt, length=_KEY_BYTES, n=n, r=r, p=p).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(private_key_info) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(plain) + encryptor.finalize()
    kdf = sequence(oid(_OID_SCRYPT), sequence(octets(salt), integer(n), integer(r), integer(p)))
    cipher = sequence(oid(_OID_AES256_CBC), octets(iv))
    algorithm = sequence(oid(_OID_PBES2), sequence(kdf, cipher))
    return sequence(algorithm, octets(encrypted))
