"""tpm_crypto without a TPM: EK/SRK validation, KDFa, and the blob opened with the private keys.

The proof against a real TPM is tests/e2e/tpm/test_blob_swtpm.py; here the blob is opened in
software with the RSA private keys behind synthetic EK and SRK public areas, so that a layout or
label mistake shows up without swtpm, and each refusal of a bad key is pinned to its message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from iotdps.attestation import tpm_crypto as tc

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:
    from cryptography.hazmat.primitives.ciphers.modes import CFB

EK_ATTRS = 0x000300B2  # TCG default EK
SRK_ATTRS = 0x00030472  # the Azure SDKs' SRK
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def _rsa_public(
    key: rsa.RSAPrivateKey,
    *,
    attrs: int,
    policy: bytes = b"",
    key_type: int = 0x0001,
    name_alg: int = 0x000B,
    sym: bytes = struct.pack(">HHH", 0x0006, 128, 0x0043),
    scheme: bytes = struct.pack(">H", 0x0010),
    key_bits: int | None = None,
    exponent: int = 0,
) -> bytes:
    """A marshaled TPM2B_PUBLIC for an RSA key, with every field overridable."""
    n = key.public_key().public_numbers().n
    modulus = n.to_bytes((n.bit_length() + 7) // 8, "big")
    bits = key_bits if key_bits is not None else key.key_size
    tpmt = (
        struct.pack(">HHI", key_type, name_alg, attrs)
        + struct.pack(">H", len(policy))
        + policy
        + sym
        + scheme
        + struct.pack(">HI", bits, exponent)
        + struct.pack(">H", len(modulus))
        + modulus
    )
    return struct.pack(">H", len(tpmt)) + tpmt


@pytest.fixture(scope="module")
def ek_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def srk_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ek(ek_key: rsa.RSAPrivateKey) -> tc.RsaTpmKey:
    return tc.parse_ek(_rsa_public(ek_key, attrs=EK_ATTRS, policy=EK_POLICY))


@pytest.fixture(scope="module")
def srk(srk_key: rsa.RSAPrivateKey) -> tc.RsaTpmKey:
    return tc.parse_srk(_rsa_public(srk_key, attrs=SRK_ATTRS))


# --- KDFa and names ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 128, 256, 264, 1024])
def test_kdfa_is_sp800_108_counter_mode_hmac_sha256(bits: int) -> None:
    """Cross-check with cryptography's independent KBKDF: counter (32 bits) before label || 0 || context || L."""
    key, label, u, v = b"k" * 32, b"STORAGE", b"context-u", b"context-v"
    reference = KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=u + v,
        fixed=None,
    ).derive(key)
    assert tc.kdfa(key, label, u, v, bits) == reference


@pytest.mark.parametrize("bits", [0, -8, 12])
def test_kdfa_refuses_lengths_that_are_not_whole_bytes(bits: int) -> None:
    with pytest.raises(ValueError, match="whole number of bytes"):
        tc.kdfa(b"k", b"STORAGE", b"", b"", bits)


def test_name_is_sha256_alg_id_then_digest_of_tpmt_public(ek: tc.RsaTpmKey) -> None:
    assert ek.name == b"\x00\x0b" + hashlib.sha256(ek.tpmt_public).digest()
    assert ek.tpm2b_public[2:] == ek.tpmt_public


# --- EK and SRK validation ----------------------------------------------------------------------


def test_sdk_style_ek_and_srk_parse(ek: tc.RsaTpmKey, srk: tc.RsaTpmKey, ek_key: rsa.RSAPrivateKey) -> None:
    assert ek.role is tc.KeyRole.EK and srk.role is tc.KeyRole.SRK
    assert ek.exponent == 65537  # 0 on the wire means the default exponent
    assert ek.symmetric_bits == 128 and ek.auth_policy == EK_POLICY
    assert ek.public_key().public_numbers() == ek_key.public_key().public_numbers()
    assert tc.TpmAttr.ADMIN_WITH_POLICY in ek.attributes
    assert "modulus" not in repr(ek)


def test_base64_wire_form(ek_key: rsa.RSAPrivateKey, ek: tc.RsaTpmKey) -> None:
    text = base64.b64encode(ek.tpm2b_public).decode()
    assert tc.parse_tpm_key_b64(f" {text}\n", tc.KeyRole.EK) == ek
    with pytest.raises(tc.TpmKeyError, match="endorsement key: not base64"):
        tc.parse_tpm_key_b64("not base64!", tc.KeyRole.EK)


_BAD_KEYS = [
    pytest.param({"key_type": 0x0023}, "key type ECC; DPS TPM attestation needs RSA-2048", id="ecc"),
    pytest.param({"name_alg": 0x0004}, "name algorithm SHA-1, expected SHA-256", id="sha1-name"),
    pytest.param({"sym": struct.pack(">H", 0x0010)}, "no symmetric definition", id="no-symmetric"),
    pytest.param({"sym": struct.pack(">HHH", 0x0006, 128, 0x0044)}, "expected AES-CFB", id="aes-cbc"),
    pytest.param({"scheme": struct.pack(">HH", 0x0017, 0x000B)}, "has an RSA scheme", id="oaep-scheme"),
    pytest.param({"key_bits": 1024}, "RSA key size 1024 bits, expected 2048", id="declares-1024"),
    pytest.param({"exponent": 65536}, "RSA exponent 65536 is not valid", id="even-exponent"),
    pytest.param({"attrs": EK_ATTRS & ~0x00010000}, "attributes lack restricted", id="not-restricted"),
    pytest.param({"attrs": EK_ATTRS & ~0x00020000}, "attributes lack decrypt", id="not-decrypt"),
    pytest.param({"attrs": EK_ATTRS & ~0x12}, "attributes lack fixedTPM|fixedParent", id="duplicable-ek"),
    pytest.param({"attrs": EK_ATTRS | 0x00040000}, "is a signing key", id="sign"),
]


@pytest.mark.parametrize(("override", "message"), _BAD_KEYS)
def test_unusable_endorsement_keys_are_refused_with_the_reason(
    ek_key: rsa.RSAPrivateKey, override: dict[str, object], message: str
) -> None:
    fields: dict[str, object] = {"attrs": EK_ATTRS, "policy": EK_POLICY, **override}
    with pytest.raises(tc.TpmKeyError, match=f"^endorsement key: .*{re.escape(message)}"):
        tc.parse_ek(_rsa_public(ek_key, **fields))  # type: ignore[arg-type]


def test_rsa_3072_is_refused() -> None:
    big = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(tc.TpmKeyError, match="RSA key size 3072 bits, expected 2048"):
        tc.parse_ek(_rsa_public(big, attrs=EK_ATTRS, policy=EK_POLICY))


def test_srk_may_be_duplicable_but_must_be_a_storage_key(srk_key: rsa.RSAPrivateKey) -> None:
    """Azure does not check the SRK against the enrollment; the blob only needs a storage parent."""
    tc.parse_srk(_rsa_public(srk_key, attrs=SRK_ATTRS & ~0x12))
    with pytest.raises(tc.TpmKeyError, match=r"^storage root key: attributes lack restricted$"):
        tc.parse_srk(_rsa_public(srk_key, attrs=SRK_ATTRS & ~0x00010000))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        pytest.param(lambda b: b[:-1], "size field says", id="short"),
        pytest.param(lambda b: b + b"\x00", "size field says", id="long"),
        pytest.param(lambda b: struct.pack(">H", len(b) - 3) + b[2:-1], "truncated", id="cut-modulus"),
        pytest.param(lambda b: struct.pack(">H", len(b) - 1) + b[2:] + b"\x00", "unexpected bytes", id="trailing"),
        pytest.param(lambda b: b"\x00", "truncated", id="one-byte"),
        pytest.param(lambda b: b"\x00\x00", "truncated", id="empty-area"),
        pytest.param(lambda b: b * 5, "too large", id="huge"),
    ],
)
def test_malformed_public_areas_are_refused(ek: tc.RsaTpmKey, mangle: object, message: str) -> None:
    data = mangle(ek.tpm2b_public)  # type: ignore[operator]
    with pytest.raises(tc.TpmKeyError, match=message):
        tc.parse_ek(data)


# --- the activation blob, opened in software ----------------------------------------------------


def _cfb_decrypt(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), CFB(bytes(16))).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _oaep(private: rsa.RSAPrivateKey, data: bytes, label: bytes) -> bytes:
    return private.decrypt(
        data, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    )


def _sized(data: bytes) -> tuple[bytes, bytes]:
    (size,) = struct.unpack(">H", data[:2])
    return data[2 : 2 + size], data[2 + size :]


def _activate_credential(ek_key: rsa.RSAPrivateKey, parts: tc.ActivationBlobParts, name: bytes) -> bytes:
    seed = _oaep(ek_key, _sized(parts.encrypted_secret)[0], b"IDENTITY\x00")
    integrity, enc_identity = _sized(_sized(parts.id_object)[0])
    hmac_key = tc.kdfa(seed, b"INTEGRITY", b"", b"", 256)
    assert hmac.compare_digest(integrity, hmac.new(hmac_key, enc_identity + name, hashlib.sha256).digest())
    credential, rest = _sized(_cfb_decrypt(tc.kdfa(seed, b"STORAGE", name, b"", 128), enc_identity))
    assert rest == b""
    return credential


def _import(srk_key: rsa.RSAPrivateKey, parts: tc.ActivationBlobParts, inner_key: bytes) -> bytes:
    """Undo both wrappers; returns the TPMT_SENSITIVE."""
    name = tc.object_name(parts.id_key_public)
    seed = _oaep(srk_key, _sized(parts.encrypted_seed)[0], b"DUPLICATE\x00")
    outer_hmac, dup_sensitive = _sized(_sized(parts.duplicate)[0])
    hmac_key = tc.kdfa(seed, b"INTEGRITY", b"", b"", 256)
    assert hmac.compare_digest(outer_hmac, hmac.new(hmac_key, dup_sensitive + name, hashlib.sha256).digest())
    inner = _cfb_decrypt(tc.kdfa(seed, b"STORAGE", name, b"", 128), dup_sensitive)
    inner_integrity, marshaled_sensitive = _sized(_cfb_decrypt(inner_key, inner))
    assert inner_integrity == hashlib.sha256(marshaled_sensitive + name).digest()
    sensitive, rest = _sized(marshaled_sensitive)
    assert rest == b""
    return sensitive


def test_blob_opens_with_the_ek_and_srk_private_keys(
    ek: tc.RsaTpmKey, srk: tc.RsaTpmKey, ek_key: rsa.RSAPrivateKey, srk_key: rsa.RSAPrivateKey
) -> None:
    made = tc.build_activation_blob(ek, srk)
    parts = tc.split_activation_blob(made.blob)
    inner_key = _activate_credential(ek_key, parts, srk.name)
    assert len(inner_key) == tc.INNER_KEY_BYTES
    sensitive = _import(srk_key, parts, inner_key)
    sensitive_type, rest = struct.unpack(">H", sensitive[:2])[0], sensitive[2:]
    auth, rest = _sized(rest)
    obfuscation, rest = _sized(rest)
    key, rest = _sized(rest)
    assert (sensitive_type, auth, rest) == (0x0008, b"", b"")
    assert key == made.key and len(key) == tc.ID_KEY_BYTES
    # The public area is the 3.3 template and commits to exactly this key.
    assert parts.id_key_public == tc.hmac_key_public(key, obfuscation)
    assert parts.encrypted_data == b"\x00\x00"


def test_blob_is_bound_to_the_srk_name(
    ek: tc.RsaTpmKey, srk: tc.RsaTpmKey, ek_key: rsa.RSAPrivateKey, srk_key: rsa.RSAPrivateKey
) -> None:
    """ActivateCredential on a TPM whose SRK has another name fails the integrity check."""
    other = tc.parse_srk(_rsa_public(rsa.generate_private_key(public_exponent=65537, key_size=2048), attrs=SRK_ATTRS))
    parts = tc.split_activation_blob(tc.build_activation_blob(ek, srk).blob)
    with pytest.raises(AssertionError):
        _activate_credential(ek_key, parts, other.name)


def test_id_key_public_template() -> None:
    public = tc.hmac_key_public(b"\x01" * 32, b"\x02" * 32)
    key_type, name_alg, attrs = struct.unpack(">HHI", public[:8])
    assert (key_type, name_alg) == (0x0008, 0x000B)
    assert tc.TpmAttr(attrs) == tc.TpmAttr.SIGN_ENCRYPT | tc.TpmAttr.USER_WITH_AUTH | tc.TpmAttr.NO_DA
    policy, rest = _sized(public[8:])
    assert policy == tc.policy_command_code_digest(0x014B)
    assert rest[:4] == struct.pack(">HH", 0x0005, 0x000B)  # HMAC scheme with SHA-256
    unique, tail = _sized(rest[4:])
    assert unique == hashlib.sha256(b"\x02" * 32 + b"\x01" * 32).digest() and tail == b""


def test_blob_layout_and_fresh_randomness(ek: tc.RsaTpmKey, srk: tc.RsaTpmKey) -> None:
    first, second = tc.build_activation_blob(ek, srk), tc.build_activation_blob(ek, srk)
    assert first.key != second.key and first.blob != second.blob
    parts = tc.split_activation_blob(first.blob)
    assert len(parts.encrypted_secret) == len(parts.encrypted_seed) == 2 + 256  # RSA-2048 ciphertexts
    # TPM2B_ID_OBJECT = size || TPM2B_DIGEST(32-byte HMAC) || 18 encrypted bytes (TPM2B of the 16-byte key)
    assert len(parts.id_object) == 2 + 2 + 32 + 2 + tc.INNER_KEY_BYTES
    assert first.blob == b"".join(
        [parts.id_object, parts.encrypted_secret, parts.duplicate, parts.encrypted_seed, parts.public, b"\x00\x00"]
    )
    assert base64.b64decode(first.blob_b64) == first.blob
    assert first.key.hex() not in repr(first)


def test_given_key_and_encrypted_data(ek: tc.RsaTpmKey, srk: tc.RsaTpmKey, ek_key: rsa.RSAPrivateKey) -> None:
    key = bytes(range(32))
    made = tc.build_activation_blob(ek, srk, key=key, encrypted_data=b"hub.example")
    assert made.key == key
    parts = tc.split_activation_blob(made.blob)
    inner_key = _activate_credential(ek_key, parts, srk.name)
    assert _cfb_decrypt(inner_key, _sized(parts.encrypted_data)[0]) == b"hub.example"
    with pytest.raises(ValueError, match="32 bytes"):
        tc.build_activation_blob(ek, srk, key=b"short")
    with pytest.raises(ValueError, match="an EK and an SRK"):
        tc.build_activation_blob(srk, ek)


def test_split_refuses_trailing_or_missing_fields(ek: tc.RsaTpmKey, srk: tc.RsaTpmKey) -> None:
    blob = tc.build_activation_blob(ek, srk).blob
    with pytest.raises(tc.TpmKeyError, match="unexpected bytes"):
        tc.split_activation_blob(blob + b"\x00")
    with pytest.raises(tc.TpmKeyError, match="truncated"):
        tc.split_activation_blob(blob[:-2])


# --- the SAS check -------------------------------------------------------------------------------


def test_sas_signature_is_hmac_sha256_of_sr_newline_expiry() -> None:
    key, sr = bytes(range(32)), "0ne00000001%2Fregistrations%2Fdevice-1"
    signature = hmac.new(key, f"{sr}\n1700000000".encode(), hashlib.sha256).digest()
    assert tc.sas_signature(key, sr, 1700000000) == signature
    assert tc.sas_signature_matches(key, sr, 1700000000, signature)
    assert not tc.sas_signature_matches(bytes(32), sr, 1700000000, signature)
    assert not tc.sas_signature_matches(key, sr, 1700000001, signature)
    assert not tc.sas_signature_matches(key, sr.replace("%2F", "%2f"), 1700000000, signature)
    assert not tc.sas_signature_matches(key, sr, 1700000000, signature[:-1])
