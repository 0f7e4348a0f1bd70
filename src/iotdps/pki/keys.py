"""Key generation and PKCS#8 serialization.

ECDSA P-256 is the default: it is what the Azure device SDKs and small modems handle best, and
it is an order of magnitude cheaper to generate than RSA (which matters when minting in bulk).
"""

from __future__ import annotations

import enum
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from iotdps.errors import BadPassphrase, InvalidInput, PkiError
from iotdps.pki.der import der_to_pem
from iotdps.pki.pkcs8 import encrypt_pkcs8
from iotdps.secret import Secret

__all__ = [
    "KeySpec",
    "PrivateKey",
    "describe_public_key",
    "encode_private_key",
    "generate_private_key",
    "load_private_key",
    "public_keys_match",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeySpec(enum.Enum):
    """The key types we issue. The value is the spelling used on the command line."""

    P256 = "p256"
    P384 = "p384"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        norm = text.strip().lower().replace("-", "").replace("_", "")
        aliases = {
            "ec": "p256",
            "ecdsa": "p256",
            "secp256r1": "p256",
            "prime256v1": "p256",
            "secp384r1": "p384",
            "rsa": "rsa2048",
        }
        norm = aliases.get(norm, norm)
        for spec in cls:
            if spec.value == norm:
                return spec
        raise InvalidInput(f"unknown key type {text!r}; choose one of {', '.join(s.value for s in cls)}")


def generate_private_key(spec: KeySpec = KeySpec.P256) -> PrivateKey:
    if not isinstance(spec, KeySpec):
        raise TypeError(f"spec must be a KeySpec, not {type(spec).__name__}")
    if spec is KeySpec.P256:
        return ec.generate_private_key(ec.SECP256R1())
    if spec is KeySpec.P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = 2048 if spec is KeySpec.RSA2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def encode_private_key(key: PrivateKey, passphrase: Secret[str] | None, *, bulk: bool = False) -> bytes:
    """PEM PKCS#8; encrypted when a passphrase is given.

    Encrypted keys use PBES2 with scrypt (N=2^14, r=8, p=5) and AES-256-CBC (see pki.pkcs8 for
    why these and why our own encoder): a CA key's passphrase must survive an offline guessing
    attack on a stolen file. `bulk` is for device keys minted by the thousand under one batch
    passphrase (`--device-passphrase`): ~0.25 s of scrypt per device would turn a minute's batch
    into hours, and that passphrase ships with every device anyway, so those keys keep
    cryptography's own PBES2 (PBKDF2-SHA256, 2,048 iterations, AES-256-CBC).
    """
    if passphrase is None:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    secret = passphrase.reveal()
    if not secret:
        raise InvalidInput("the passphrase is empty")
    if bulk:
        enc = serialization.BestAvailableEncryption(secret.encode("utf-8"))
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    plain = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der_to_pem(encrypt_pkcs8(plain, secret.encode("utf-8")), "ENCRYPTED PRIVATE KEY")


def load_private_key(data: bytes, passphrase: Secret[str] | None, *, what: str = "private key") -> PrivateKey:
    """Load a PEM or DER private key, decrypting it with `passphrase` when it is encrypted.

    Errors name `what` (e.g. "key of CA 'factory'") but never include the key or passphrase.
    """
    pw = passphrase.reveal().encode("utf-8") if passphrase is not None else None
    pem = b"-----BEGIN" in data
    loader = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = loader(data, pw)
    except TypeError as exc:
        # cryptography raises TypeError both for "encrypted, no password" and "not encrypted,
        # password given"; only the first is the user's problem.
        if pw is None:
            raise BadPassphrase(f"the {what} is encrypted and no passphrase was given") from None
        if "not encrypted" in str(exc):
            key = loader(data, None)
        else:
            raise PkiError(f"cannot load the {what}") from None
    except ValueError:
        if pw is not None and b"ENCRYPTED" in data:
            raise BadPassphrase(f"wrong passphrase for the {what}") from None
        raise InvalidInput(f"the {what} is not a valid PEM or DER private key") from None
    except Exception:
        raise InvalidInput(f"the {what} could not be read") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidInput(f"the {what} is a {type(key).__name__}; only EC and RSA keys are supported")
    return key


def public_keys_match(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(serialization.Encoding.DER, fmt)


def describe_public_key(key: CertificatePublicKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__
