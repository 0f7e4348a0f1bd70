"""The one trust bundle iotdps keeps itself: the server's own CAs (provisioning/server_ca.py).

Its id is reserved here, beside the other trust-bundle rules the management API and the CLI
share (issuance.admin), so both refuse to write or delete it by hand: a hand edit could drop
the CA that devices are about to need, and the rotation status would no longer be true.
"""

from __future__ import annotations

from iotdps.errors import InvalidInput

__all__ = ["BUILTIN_BUNDLE_ID", "check_not_builtin", "is_builtin"]

BUILTIN_BUNDLE_ID = "iotdps-server-ca"


def is_builtin(bundle_id: str | None) -> bool:
    return bundle_id is not None and bundle_id.lower() == BUILTIN_BUNDLE_ID


def check_not_builtin(bundle_id: str) -> None:
    """InvalidInput for a write by hand to the bundle only `iotdps tls` keeps."""
    if is_builtin(bundle_id):
        raise InvalidInput(
            f"trust bundle {BUILTIN_BUNDLE_ID!r} holds the server's own CAs and is kept by iotdps "
            "(iotdps tls rotate / activate / retire); enrollments may name it, but it cannot be changed by hand"
        )
