"""TPM 2.0 cryptography for DPS TPM attestation, done in software: the service needs no TPM.

What this module does (azure-wire-protocol.md 3):

* Parse and validate the EK and SRK a device sends (`endorsementKey`, `storageRootKey`: base64 of a
  marshaled TPM2B_PUBLIC, 3.1). Both must be RSA-2048 restricted decryption keys with SHA-256
  names and an AES-CFB symmetric definition, because the blob below is built with exactly those
  parameters; anything else is refused with a `TpmKeyError` that says what is wrong.
* Compute TPM object names (nameAlg || H(TPMT_PUBLIC)) and KDFa (TPM 2.0 Part 1, 11.4.10.2:
  SP 800-108 counter-mode HMAC, 32-bit counter before the fixed data).
* Build the activation blob of 3.3: a fresh 32-byte HMAC key (the "ID key") duplicated to the
  device's SRK with an inner AES-128-CFB wrapper, and that inner wrapper key sent as a
  MakeCredential credential to the EK, bound to the SRK's name. Only the TPM holding both the EK
  and the SRK can recover the inner key (ActivateCredential) and import the ID key (Import); the
  service keeps the 32 bytes and checks the device's SAS with plain HMAC-SHA256.
* Check that SAS signature (3.2 step 3).

The steps follow TPM 2.0 Part 1 (Architecture): 24 (credential protection: MakeCredential) and
23.3 (duplication: inner and outer wrappers), and Part 2 for the marshaling. The blob's field
order is the one the Azure C SDK (hsm_client_tpm.c) and the Node SDK (azure-iot-security-tpm)
unmarshal. The known-answer tests in tests/unit/attestation/test_tpm_crypto_swtpm.py prove each
piece against a real TPM (swtpm): it must activate, import, load, and HMAC to the same bytes.

Only `cryptography` and the standard library: this module must import where no TSS is installed.
Secrets (seeds, wrapper keys, the ID key) are never part of an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from enum import Enum, IntFlag

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB among its "decrepit" modes; 49 drops the old location
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # cryptography 44 to 46
    from cryptography.hazmat.primitives.ciphers.modes import CFB

__all__ = [
    "ID_KEY_BYTES",
    "INNER_KEY_BYTES",
    "ActivationBlob",
    "ActivationBlobParts",
    "KeyRole",
    "RsaTpmKey",
    "TpmAttr",
    "TpmKeyError",
    "build_activation_blob",
    "duplicate",
    "hmac_key_public",
    "hmac_key_sensitive",
    "kdfa",
    "make_credential",
    "object_name",
    "parse_ek",
    "parse_srk",
    "parse_tpm_key",
    "parse_tpm_key_b64",
    "policy_command_code_digest",
    "sas_signature",
    "sas_signature_matches",
    "split_activation_blob",
]

# TPM_ALG_ID values (TPM 2.0 Part 2, 6.3).
ALG_RSA = 0x0001
ALG_HMAC = 0x0005
ALG_AES = 0x0006
ALG_KEYEDHASH = 0x0008
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ALG_ECC = 0x0023
ALG_SYMCIPHER = 0x0025
ALG_CFB = 0x0043

_ALG_NAMES = {
    ALG_RSA: "RSA",
    ALG_KEYEDHASH: "KEYEDHASH",
    ALG_ECC: "ECC",
    ALG_SYMCIPHER: "SYMCIPHER",
    0x0004: "SHA-1",
    ALG_SHA256: "SHA-256",
    0x000C: "SHA-384",
    0x000D: "SHA-512",
}

TPM_CC_DUPLICATE = 0x0000014B
TPM_CC_POLICY_COMMAND_CODE = 0x0000016C

SHA256_BYTES = 32
RSA_KEY_BITS = 2048
INNER_KEY_BYTES = 16  # AES-128: the C SDK imports with a fixed AES-128-CFB symmetric definition
ID_KEY_BYTES = 32  # the HMAC-SHA256 key the device signs SAS tokens with (3.3)
_MAX_PUBLIC_BYTES = 1024  # a TPM2B_PUBLIC of an RSA-2048 key is about 320 bytes

# OAEP labels include the terminating NUL (Part 1, 11.4.10.3 / B.10.3).
_LABEL_IDENTITY = b"IDENTITY\x00"
_LABEL_DUPLICATE = b"DUPLICATE\x00"
# KDFa labels, without the NUL: kdfa() adds the 0x00 separator itself.
_LABEL_STORAGE = b"STORAGE"
_LABEL_INTEGRITY = b"INTEGRITY"


class TpmAttr(IntFlag):
    """TPMA_OBJECT bits (Part 2, 8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18


# The ID key (3.3): an HMAC key the device can sign with, duplicable (no fixedTPM/fixedParent,
# which TPM2_Import requires), usable with a plain password session, exempt from DA lockout.
ID_KEY_ATTRIBUTES = TpmAttr.SIGN_ENCRYPT | TpmAttr.USER_WITH_AUTH | TpmAttr.NO_DA


class TpmKeyError(ValueError):
    """An EK, SRK or activation blob that cannot be used; the message is safe to show."""


class KeyRole(Enum):
    EK = "endorsement key"
    SRK = "storage root key"


def _alg_name(alg: int) -> str:
    return _ALG_NAMES.get(alg, f"0x{alg:04x}")


class _Reader:
    """Bounds-checked big-endian reader for TPM marshaled data."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise TpmKeyError(f"{self._what}: truncated (needs {count} more bytes, has {self.remaining})")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def sized(self) -> bytes:
        """A TPM2B: UINT16 size, then that many bytes (returned without the size)."""
        return self.take(self.u16())


def _tpm2b(data: bytes) -> bytes:
    """Marshal bytes as a TPM2B (UINT16 size prefix)."""
    if len(data) > 0xFFFF:
        raise ValueError("TPM2B payload larger than 65535 bytes")
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True, slots=True)
class RsaTpmKey:
    """An RSA TPM key's public area, validated for its role (EK or SRK)."""

    role: KeyRole
    tpmt_public: bytes  # the marshaled TPMT_PUBLIC, exactly as the device sent it
    attributes: TpmAttr
    auth_policy: bytes
    symmetric_bits: int  # AES key size of the key's symmetric definition (CFB mode)
    exponent: int
    modulus: bytes = field(repr=False)

    @property
    def name(self) -> bytes:
        """The TPM name: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC). Stable identity of the key."""
        return object_name(self.tpmt_public)

    @property
    def tpm2b_public(self) -> bytes:
        return _tpm2b(self.tpmt_public)

    def public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.exponent, int.from_bytes(self.modulus, "big")).public_key()


def object_name(tpmt_public: bytes) -> bytes:
    """Name of an object whose nameAlg is SHA-256 (Part 1, 16): 0x000B || SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(tpmt_public).digest()


def parse_tpm_key(data: bytes, role: KeyRole) -> RsaTpmKey:
    """Parse a marshaled TPM2B_PUBLIC and check that it can serve as `role` in the blob."""
    what = role.value
    if len(data) > _MAX_PUBLIC_BYTES:
        raise TpmKeyError(f"{what}: {len(data)} bytes is too large for a TPM2B_PUBLIC")
    outer = _Reader(data, what)
    declared = outer.u16()
    if declared != outer.remaining:
        raise TpmKeyError(
            f"{what}: not a TPM2B_PUBLIC (its size field says {declared} bytes, {outer.remaining} follow)"
        )
    tpmt = outer.take(declared)
    r = _Reader(tpmt, what)
    key_type = r.u16()
    if key_type != ALG_RSA:
        raise TpmKeyError(f"{what}: key type {_alg_name(key_type)}; DPS TPM attestation needs RSA-2048")
    name_alg = r.u16()
    if name_alg != ALG_SHA256:
        raise TpmKeyError(f"{what}: name algorithm {_alg_name(name_alg)}, expected SHA-256")
    attributes = TpmAttr(r.u32())
    auth_policy = r.sized()
    sym_alg = r.u16()
    sym_bits = 0
    if sym_alg != ALG_NULL:
        sym_bits = r.u16()
        sym_mode = r.u16()
        if sym_alg != ALG_AES or sym_mode != ALG_CFB or sym_bits not in (128, 192, 256):
            raise TpmKeyError(
                f"{what}: symmetric definition {_alg_name(sym_alg)}-{sym_bits} mode 0x{sym_mode:04x}, expected AES-CFB"
            )
    scheme = r.u16()
    if scheme != ALG_NULL:
        r.u16()  # the scheme's hash algorithm; read only to report trailing bytes correctly
    key_bits = r.u16()
    exponent = r.u32() or 65537  # 0 means the default exponent (Part 2, 12.2.3.5)
    modulus = r.sized()
    if r.remaining:
        raise TpmKeyError(f"{what}: {r.remaining} unexpected bytes after the public area")
    if sym_alg == ALG_NULL:
        raise TpmKeyError(f"{what}: has no symmetric definition; a storage or endorsement key needs AES-CFB")
    if scheme != ALG_NULL:
        raise TpmKeyError(f"{what}: has an RSA scheme (0x{scheme:04x}); a restricted decryption key has none")
    if key_bits != RSA_KEY_BITS or int.from_bytes(modulus, "big").bit_length() != RSA_KEY_BITS:
        raise TpmKeyError(f"{what}: RSA key size {key_bits} bits, expected {RSA_KEY_BITS}")
    if exponent < 3 or exponent % 2 == 0:
        raise TpmKeyError(f"{what}: RSA exponent {exponent} is not valid")
    required = TpmAttr.RESTRICTED | TpmAttr.DECRYPT
    if role is KeyRole.EK:
        # An EK never leaves its TPM: a duplicable "EK" would prove nothing about the device.
        required |= TpmAttr.FIXED_TPM | TpmAttr.FIXED_PARENT
    missing = required & ~attributes
    if missing:
        raise TpmKeyError(f"{what}: attributes lack {_attr_names(missing)}")
    if attributes & TpmAttr.SIGN_ENCRYPT:
        raise TpmKeyError(f"{what}: is a signing key; expected a restricted decryption key")
    return RsaTpmKey(
        role=role,
        tpmt_public=tpmt,
        attributes=attributes,
        auth_policy=auth_policy,
        symmetric_bits=sym_bits,
        exponent=exponent,
        modulus=modulus,
    )


_ATTR_SPEC_NAMES = {
    TpmAttr.FIXED_TPM: "fixedTPM",
    TpmAttr.ST_CLEAR: "stClear",
    TpmAttr.FIXED_PARENT: "fixedParent",
    TpmAttr.SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    TpmAttr.USER_WITH_AUTH: "userWithAuth",
    TpmAttr.ADMIN_WITH_POLICY: "adminWithPolicy",
    TpmAttr.NO_DA: "noDA",
    TpmAttr.ENCRYPTED_DUPLICATION: "encryptedDuplication",
    TpmAttr.RESTRICTED: "restricted",
    TpmAttr.DECRYPT: "decrypt",
    TpmAttr.SIGN_ENCRYPT: "sign",
}


def _attr_names(flags: TpmAttr) -> str:
    """Attribute names as the TPM specification writes them (fixedTPM|fixedParent)."""
    return "|".join(name for member, name in _ATTR_SPEC_NAMES.items() if member in flags)


def parse_ek(data: bytes) -> RsaTpmKey:
    return parse_tpm_key(data, KeyRole.EK)


def parse_srk(data: bytes) -> RsaTpmKey:
    return parse_tpm_key(data, KeyRole.SRK)


def parse_tpm_key_b64(text: str, role: KeyRole) -> RsaTpmKey:
    """The wire form: standard base64 of the TPM2B_PUBLIC (register body, enrollment API)."""
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TpmKeyError(f"{role.value}: not base64") from exc
    return parse_tpm_key(data, role)


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA-256 (Part 1, 11.4.10.2).

    K(i) = HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32), i = 1, 2, ...
    concatenated and cut to `bits`. `label` is given without its terminating NUL.
    """
    if bits <= 0 or bits % 8:
        raise ValueError("KDFa output must be a positive whole number of bytes")
    fixed = label + b"\x00" + context_u + context_v + struct.pack(">I", bits)
    wanted = bits // 8
    out = bytearray()
    counter = 1
    while len(out) < wanted:  # at most ceil(bits / 256) rounds
        out += hmac.new(key, struct.pack(">I", counter) + fixed, hashlib.sha256).digest()
        counter += 1
    return bytes(out[:wanted])


def _aes_cfb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES in full-block CFB with a zero IV, as the TPM uses for protected data (Part 1, 23/24)."""
    encryptor = Cipher(algorithms.AES(key), CFB(bytes(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _oaep_encrypt(target: RsaTpmKey, secret: bytes, label: bytes) -> bytes:
    """The seed "secret" for an RSA key: RSA-OAEP with the key's nameAlg (SHA-256) and a TPM label."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    return target.public_key().encrypt(secret, oaep)


def make_credential(ek: RsaTpmKey, credential: bytes, name: bytes, *, seed: bytes | None = None) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software (Part 1, 24; Part 3, 13.6).

    Returns (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), both marshaled with their size fields.
    `name` is the name of the object the credential is bound to (here the SRK); ActivateCredential
    on the device succeeds only if that object is loaded in the same TPM as the EK.
    """
    if len(credential) > SHA256_BYTES:
        raise ValueError("a credential is at most one SHA-256 digest long")
    seed = seed if seed is not None else os.urandom(SHA256_BYTES)
    secret = _oaep_encrypt(ek, seed, _LABEL_IDENTITY)
    sym_key = kdfa(seed, _LABEL_STORAGE, name, b"", ek.symmetric_bits)
    # The whole TPM2B_DIGEST, size field included, is encrypted (Part 2, TPMS_ID_OBJECT).
    enc_identity = _aes_cfb_encrypt(sym_key, _tpm2b(credential))
    hmac_key = kdfa(seed, _LABEL_INTEGRITY, b"", b"", SHA256_BYTES * 8)
    integrity = hmac.new(hmac_key, enc_identity + name, hashlib.sha256).digest()
    id_object = _tpm2b(_tpm2b(integrity) + enc_identity)
    return id_object, _tpm2b(secret)


def duplicate(
    parent: RsaTpmKey,
    tpmt_public: bytes,
    tpmt_sensitive: bytes,
    inner_key: bytes,
    *,
    seed: bytes | None = None,
) -> tuple[bytes, bytes]:
    """TPM2_Duplicate in software, to an external new parent (Part 1, 23.3.2).

    Inner wrapper: AES-CFB with `inner_key` (zero IV) over TPM2B(innerIntegrity) || TPM2B_SENSITIVE,
    where innerIntegrity = SHA-256(TPM2B_SENSITIVE || name). Outer wrapper: a random seed
    RSA-OAEP-encrypted to the parent with "DUPLICATE", AES-CFB with KDFa(seed, "STORAGE", name)
    sized by the parent's symmetric definition, and HMAC-SHA-256 with KDFa(seed, "INTEGRITY")
    over (encrypted data || name).

    Returns (TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET) marshaled with their size fields: the
    `duplicate` and `inSymSeed` arguments of TPM2_Import.
    """
    name = object_name(tpmt_public)
    sensitive = _tpm2b(tpmt_sensitive)
    inner_integrity = hashlib.sha256(sensitive + name).digest()
    inner = _aes_cfb_encrypt(inner_key, _tpm2b(inner_integrity) + sensitive)
    seed = seed if seed is not None else os.urandom(SHA256_BYTES)
    encrypted_seed = _oaep_encrypt(parent, seed, _LABEL_DUPLICATE)
    outer_key = kdfa(seed, _LABEL_STORAGE, name, b"", parent.symmetric_bits)
    dup_sensitive = _aes_cfb_encrypt(outer_key, inner)
    hmac_key = kdfa(seed, _LABEL_INTEGRITY, b"", b"", SHA256_BYTES * 8)
    outer_hmac = hmac.new(hmac_key, dup_sensitive + name, hashlib.sha256).digest()
    return _tpm2b(_tpm2b(outer_hmac) + dup_sensitive), _tpm2b(encrypted_seed)


def policy_command_code_digest(command_code: int) -> bytes:
    """The SHA-256 policy digest after TPM2_PolicyCommandCode(command_code) on a fresh session."""
    return hashlib.sha256(bytes(SHA256_BYTES) + struct.pack(">II", TPM_CC_POLICY_COMMAND_CODE, command_code)).digest()


def hmac_key_public(key: bytes, obfuscation: bytes) -> bytes:
    """TPMT_PUBLIC of the ID key (3.3): KEYEDHASH, HMAC-SHA-256, sign|userWithAuth|noDA.

    The authPolicy is PolicyCommandCode(TPM_CC_Duplicate), as in Microsoft's DRS sample: the key
    can be duplicated again under that policy and used for nothing else without its (empty) auth.
    For a KEYEDHASH object, unique = nameAlg digest of (obfuscation value || key) (Part 1, 27.2.5);
    the TPM checks it against the sensitive area when it loads the key.
    """
    unique = hashlib.sha256(obfuscation + key).digest()
    return (
        struct.pack(">HHI", ALG_KEYEDHASH, ALG_SHA256, int(ID_KEY_ATTRIBUTES))
        + _tpm2b(policy_command_code_digest(TPM_CC_DUPLICATE))
        + struct.pack(">HH", ALG_HMAC, ALG_SHA256)  # TPMT_KEYEDHASH_SCHEME: HMAC with SHA-256
        + _tpm2b(unique)
    )


def hmac_key_sensitive(key: bytes, obfuscation: bytes) -> bytes:
    """TPMT_SENSITIVE of the ID key: empty authValue, the obfuscation value, the key bits."""
    return struct.pack(">H", ALG_KEYEDHASH) + _tpm2b(b"") + _tpm2b(obfuscation) + _tpm2b(key)


@dataclass(frozen=True, slots=True)
class ActivationBlob:
    """The `authenticationKey` of the 401 challenge (and of `registrationState.tpm`), and its key.

    `key` is the ID key's 32 bytes: what the service keeps to check the device's SAS signatures
    and, for the second blob, the device's hub key. Never log it.
    """

    blob: bytes
    key: bytes = field(repr=False)

    @property
    def blob_b64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")


def build_activation_blob(
    ek: RsaTpmKey,
    srk: RsaTpmKey,
    *,
    key: bytes | None = None,
    encrypted_data: bytes = b"",
) -> ActivationBlob:
    """The activation blob of azure-wire-protocol.md 3.3, for a device with this EK and SRK.

    Layout (each field marshaled with its UINT16 size, in the order the C and Node SDKs read):

    1. TPM2B_ID_OBJECT        MakeCredential(EK, credential = inner wrapper key, name = SRK name)
    2. TPM2B_ENCRYPTED_SECRET the MakeCredential seed, OAEP "IDENTITY" to the EK
    3. TPM2B_PRIVATE          the ID key duplicated to the SRK, inner wrapper = that inner key
    4. TPM2B_ENCRYPTED_SECRET the duplication seed, OAEP "DUPLICATE" to the SRK
    5. TPM2B_PUBLIC           the ID key's public area
    6. TPM2B_DATA             optional data encrypted with the inner key; empty by default. The
                              size field is always present: the Node SDK fails without it.
    """
    if ek.role is not KeyRole.EK or srk.role is not KeyRole.SRK:
        raise ValueError("build_activation_blob takes an EK and an SRK, in that order")
    key = key if key is not None else os.urandom(ID_KEY_BYTES)
    if len(key) != ID_KEY_BYTES:
        raise ValueError(f"the ID key is {ID_KEY_BYTES} bytes")
    inner_key = os.urandom(INNER_KEY_BYTES)
    obfuscation = os.urandom(SHA256_BYTES)
    public = hmac_key_public(key, obfuscation)
    private, encrypted_seed = duplicate(srk, public, hmac_key_sensitive(key, obfuscation), inner_key)
    id_object, secret = make_credential(ek, inner_key, srk.name)
    trailer = _aes_cfb_encrypt(inner_key, encrypted_data) if encrypted_data else b""
    blob = id_object + secret + private + encrypted_seed + _tpm2b(public) + _tpm2b(trailer)
    return ActivationBlob(blob=blob, key=key)


@dataclass(frozen=True, slots=True)
class ActivationBlobParts:
    """The six fields of an activation blob, each still marshaled with its UINT16 size."""

    id_object: bytes
    encrypted_secret: bytes
    duplicate: bytes
    encrypted_seed: bytes
    public: bytes
    encrypted_data: bytes

    @property
    def id_key_public(self) -> bytes:
        """The ID key's TPMT_PUBLIC (without the size)."""
        return self.public[2:]


def split_activation_blob(blob: bytes) -> ActivationBlobParts:
    """Cut a blob into its fields as the C and Node SDKs do (for a device client and for tests)."""
    r = _Reader(blob, "activation blob")
    fields = [_tpm2b(r.sized()) for _ in range(6)]
    if r.remaining:
        raise TpmKeyError(f"activation blob: {r.remaining} unexpected bytes after the last field")
    return ActivationBlobParts(*fields)


def sas_signature(key: bytes, sr: str, expiry: int) -> bytes:
    """HMAC-SHA-256 over "sr\\nse", what the device's TPM computes with the imported ID key.

    `sr` is the URL-encoded resource exactly as it appears in the token: the device signed that
    string, whichever way its SDK percent-encoded it.
    """
    return hmac.new(key, f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()


def sas_signature_matches(key: bytes, sr: str, expiry: int, signature: bytes) -> bool:
    """Constant-time check of a device's SAS signature against the key the service generated."""
    return hmac.compare_digest(sas_signature(key, sr, expiry), signature)
