"""A console session as a way in: the names of its cookie and CSRF header, what a session
remembers of a key, and which policy a session may act as for one right.

The session table itself (memory, lifetimes, CSRF tokens) is the console's (iotdps.web); the
check here sees it through `SessionGate`, so the management API and the console agree on the
rules without importing each other.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Protocol

from iotdps.access.rights import AccessPolicy, Permission
from iotdps.errors import Unauthorized

__all__ = ["CSRF_HEADER", "SAFE_METHODS", "SESSION_COOKIE", "SessionGate", "key_digest", "session_policy"]

# The name the session refusals have always been logged under (operators filter on it).
log = logging.getLogger("iotdps.api.auth")

# The console's session cookie: `__Host-` makes the browser insist on Secure, Path=/ and no
# Domain, so no other host (or plain-HTTP origin) can set or read it.
SESSION_COOKIE = "__Host-iotdps-session"
CSRF_HEADER = "X-CSRF-Token"
# Methods that change nothing; every other method through a session needs the CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def key_digest(key: str) -> str:
    """What a session remembers of the key it was opened with: enough to notice a rotation."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class SessionGate(Protocol):
    """The console's session table (iotdps.web.sessions), as the API's check sees it."""

    def proven(self, session_id: str, csrf_token: str | None, *, change: bool) -> Mapping[str, str]:
        """Policy name -> key_digest of the key given at login, for a live session. Raises
        Unauthorized for an unknown or expired session, and Forbidden when `change` and
        `csrf_token` is missing or not the session's."""
        ...


def session_policy(
    policies: Mapping[str, AccessPolicy], proven: Mapping[str, str], needed: Permission | None
) -> AccessPolicy:
    """The first policy (by name) of a session's `proven` ones that still has the key the
    session was opened with and grants `needed`; else Unauthorized. A policy whose keys were
    rotated since the login no longer counts for the session."""
    for name, digest in sorted(proven.items()):
        policy = policies.get(name)
        if policy is None or not any(
            hmac.compare_digest(digest, key_digest(k.reveal())) for k in (policy.primary_key, policy.secondary_key)
        ):
            continue
        if needed is None or needed in policy.rights:
            return policy
    wanted = needed.value if needed is not None else "access"
    log.info("console session refused: its policies (%s) do not grant %s", ", ".join(sorted(proven)), wanted)
    raise Unauthorized(f"the policies of this session do not grant {wanted}")
