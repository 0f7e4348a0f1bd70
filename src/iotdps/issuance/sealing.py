"""Secrets at rest: an issuing CA's CFSSL auth key or local key passphrase, sealed.

The database must not hold what lets its reader mint device certificates. A secret is sealed
with AES-256-GCM under the service's sealing key (32 random bytes that live outside the
database: a 0600 file beside it, or $IOTDPS_SEALING_KEY), with the issuing CA's name as the
associated data, so a sealed value copied to another CA's row does not open there.

Sealed text: "v1." + base64url(nonce || ciphertext+tag). The version prefix leaves room for a
PKCS#11-wrapped key later.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iotdps.errors import ConfigError, InvalidInput
from iotdps.secret import Secret

__all__ = ["SEALING_KEY_ENV", "SEALING_KEY_FILE", "SealingKey"]

SEALING_KEY_ENV = "IOTDPS_SEALING_KEY"
SEALING_KEY_FILE = "sealing.key"  # in the data directory, beside the database
_PREFIX = "v1."
_NONCE = 12
_MAX_SECRET = 4096  # an auth key or a passphrase; anything longer is a mistake


class SealingKey:
    """The key that seals issuing-CA secrets. Never printed (repr is masked)."""

    __slots__ = ("_aead",)

    def __init__(self, key: Secret[bytes]) -> None:
        raw = key.reveal()
        if len(raw) != 32:
            raise ConfigError(["the sealing key must be 32 bytes (64 hex digits)"])
        self._aead = AESGCM(raw)

    def __repr__(self) -> str:
        return "SealingKey(**********)"

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(Secret(secrets.token_bytes(32)))

    @classmethod
    def from_hex(cls, text: str) -> SealingKey:
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raise ConfigError([f"{SEALING_KEY_ENV} must be 64 hex digits"]) from None
        return cls(Secret(raw))

    @classmethod
    def load_or_create(cls, path: Path, environ: dict[str, str] | None = None) -> SealingKey:
        """$IOTDPS_SEALING_KEY if set, else the hex key in `path`, created (0600) when missing."""
        env = os.environ if environ is None else environ
        configured = env.get(SEALING_KEY_ENV)
        if configured:
            return cls.from_hex(configured)
        if path.exists():
            return cls.from_hex(path.read_text(encoding="ascii"))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        raw = secrets.token_bytes(32)
        # O_EXCL: two processes starting together must not overwrite each other's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(raw.hex() + "\n")
        return cls(Secret(raw))

    def seal(self, secret: Secret[str], context: str) -> str:
        value = secret.reveal()
        if not isinstance(value, str) or not value or len(value) > _MAX_SECRET:
            raise InvalidInput(f"a secret must be 1-{_MAX_SECRET} characters")
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), context.encode("utf-8"))
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> Secret[str]:
        """The secret, or ConfigError when it was sealed under another key or for another name."""
        if not sealed.startswith(_PREFIX):
            raise ConfigError([f"the sealed secret of {context!r} has an unknown format"])
        try:
            blob = base64.urlsafe_b64decode(sealed[len(_PREFIX) :].encode("ascii"))
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], context.encode("utf-8"))
        except (binascii.Error, ValueError, InvalidTag):
            raise ConfigError(
                [f"the sealed secret of {context!r} does not open: the sealing key is not the one it was sealed with"]
            ) from None
        return Secret(plain.decode("utf-8"))
