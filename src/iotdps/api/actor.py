"""Who a management API request acts as, for the audit trail: the policy whose token signed
it, or the console session (cookie, no Authorization header) acting as one of its policies.
The same rule `AccessPolicies.authorize` uses to choose between the two."""

from __future__ import annotations

from collections.abc import Mapping

from iotdps.access import SESSION_COOKIE, AccessPolicy, SessionGate
from iotdps.audit import Actor

__all__ = ["request_actor"]


def request_actor(
    headers: Mapping[str, str], cookies: Mapping[str, str], sessions: SessionGate | None, policy: AccessPolicy
) -> Actor:
    by_session = not headers.get("Authorization") and sessions is not None and bool(cookies.get(SESSION_COOKIE))
    return Actor("console" if by_session else "policy", policy.name)
