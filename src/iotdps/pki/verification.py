"""Verification codes of CA proof of possession: fresh ones, and how a stored one is checked.

Proof of possession: the service hands out a random code; whoever holds the CA's key issues a
verification certificate whose CN is that code, signed by the CA (`provisioning.ca_admin` checks
both, the signature with `pki.certs.signed_by`).

Codes are secrets: the store keeps only a hash.

A verification code is single use and short lived, but while it is valid whoever knows it can
get a CA marked verified (by anyone holding the CA key, which is the point, yet a leaked
database dump should not hand out live codes). So `CaRepo.put` stores `hash_code(code)` and a
record read back holds that hash in `verification_code`. Whoever checks a presented code calls
`code_matches(record.verification_code, presented)`; it accepts the stored hash or, for a
record that never went through a store, the plain code, and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from iotdps.secret import Secret

__all__ = ["HASH_PREFIX", "code_matches", "hash_code", "is_hashed", "new_code"]

# A prefix marks a hashed value so that putting a record read back from the store does not
# hash the hash. Generated codes are hex or base64url and never contain '$'.
HASH_PREFIX = "sha256$"


def is_hashed(value: str) -> bool:
    return value.startswith(HASH_PREFIX)


def hash_code(code: str) -> str:
    """The stored form of a verification code; idempotent on an already hashed value."""
    if is_hashed(code):
        return code
    return HASH_PREFIX + hashlib.sha256(code.encode("utf-8")).hexdigest()


def code_matches(stored: Secret[str] | None, presented: str) -> bool:
    """True when `presented` is the code whose hash (or plain value) is `stored`."""
    if stored is None or not presented:
        return False
    expected = hash_code(stored.reveal())
    # Always hash what was presented, even if it looks hashed: presenting the stored hash
    # (from a leaked dump) must not pass for the code.
    offered = HASH_PREFIX + hashlib.sha256(presented.encode("utf-8")).hexdigest()
    return hmac.compare_digest(expected.encode("utf-8"), offered.encode("utf-8"))


def new_code() -> str:
    """A fresh verification code: 48 upper-case hex digits (192 random bits), fit for a CN."""
    return secrets.token_hex(24).upper()
