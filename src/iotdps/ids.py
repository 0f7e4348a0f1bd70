"""Identifier rules shared by the CA toolkit, the provisioning core and the hub; fresh etags."""

from __future__ import annotations

import re
import secrets

from iotdps.errors import InvalidRegistrationId

__all__ = [
    "REGISTRATION_ID_MAX",
    "check_registration_id",
    "is_valid_registration_id",
    "new_etag",
    "registration_key",
    "same_registration_id",
]

REGISTRATION_ID_MAX = 128

# DPS: case-insensitive alphanumerics plus - . _ : ; at most 128 characters; the last
# character must be alphanumeric or '-' (azure-wire-protocol.md 1.4).
_REGISTRATION_ID = re.compile(r"^[A-Za-z0-9._:-]*[A-Za-z0-9-]\Z")


def registration_key(value: str) -> str:
    """The form registration ids are compared and stored under: DPS treats them case-
    insensitively ("a case-insensitive string", REST spec; `GDEV-1` and `gdev-1` are one
    registration), so the store keys them lower case while each record keeps the spelling it
    was written with. The alphabet is ASCII, so lower() is a full case fold."""
    return value.lower()


def same_registration_id(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def is_valid_registration_id(value: str) -> bool:
    return len(value) <= REGISTRATION_ID_MAX and bool(_REGISTRATION_ID.match(value))


def check_registration_id(value: str) -> str:
    """Return `value` if it is a valid DPS registration id, else raise with the rule broken."""
    if len(value) <= REGISTRATION_ID_MAX and _REGISTRATION_ID.match(value):
        return value  # valid: one regex match (this runs a few times per registration)
    if not value:
        raise InvalidRegistrationId("registration id is empty")
    if len(value) > REGISTRATION_ID_MAX:
        raise InvalidRegistrationId(
            f"registration id is {len(value)} characters long; at most {REGISTRATION_ID_MAX} are allowed"
        )
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "-._:"))})
    if bad:
        shown = "".join(bad)
        raise InvalidRegistrationId(
            f"registration id {value!r} contains {shown!r}; only letters, digits and - . _ : are allowed"
        )
    raise InvalidRegistrationId(f"registration id {value!r} must end with a letter, a digit or '-'")


def new_etag() -> str:
    """An opaque entity tag; a fresh one is written with every change of a record."""
    return secrets.token_hex(8)
