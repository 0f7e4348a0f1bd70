"""Secrets sealed for the shared database: AES-256-GCM under a key derived from a passphrase.

Why: several nodes read the service's identity (server CA key, access policy keys) from one
database, and a database dump or a read-only database login must not hand those out. The
passphrase comes from the environment of every node (the same IOTDPS_SERVER_CA_PASSPHRASE that
already encrypts the server CA key), never from the database.

Format: `v1.` + base64url(salt 16 | nonce 12 | ciphertext+tag). scrypt (n=2**14, r=8, p=1)
stretches the passphrase, with a fresh salt per value, so a leaked value can only be attacked
one expensive guess at a time. `name` is bound in as associated data: a value copied under
another name does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from iotdps.errors import ConfigError
from iotdps.secret import Secret

__all__ = ["open_sealed", "seal"]

_PREFIX = "v1."
_SALT = 16
_NONCE = 12


def _key(passphrase: Secret[str], salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.reveal().encode("utf-8"))


def seal(name: str, plaintext: bytes, passphrase: Secret[str]) -> str:
    salt, nonce = os.urandom(_SALT), os.urandom(_NONCE)
    sealed = AESGCM(_key(passphrase, salt)).encrypt(nonce, plaintext, name.encode("utf-8"))
    return _PREFIX + base64.urlsafe_b64encode(salt + nonce + sealed).decode("ascii")


def open_sealed(name: str, value: str, passphrase: Secret[str]) -> bytes:
    """The plaintext; ConfigError when the value is damaged or the passphrase is not the one it
    was sealed with (the message names neither the passphrase nor the content)."""
    if not value.startswith(_PREFIX):
        raise ConfigError([f"the shared secret {name!r} in the database is not in a known format"])
    try:
        raw = base64.urlsafe_b64decode(value[len(_PREFIX) :])
    except (binascii.Error, ValueError):
        raise ConfigError([f"the shared secret {name!r} in the database is damaged"]) from None
    if len(raw) < _SALT + _NONCE + 16:
        raise ConfigError([f"the shared secret {name!r} in the database is damaged"])
    salt, nonce, sealed = raw[:_SALT], raw[_SALT : _SALT + _NONCE], raw[_SALT + _NONCE :]
    try:
        return AESGCM(_key(passphrase, salt)).decrypt(nonce, sealed, name.encode("utf-8"))
    except InvalidTag:
        raise ConfigError(
            [
                f"the shared secret {name!r} in the database does not open with this node's "
                "IOTDPS_SERVER_CA_PASSPHRASE: give every node the passphrase of the node that initialised the service"
            ]
        ) from None
