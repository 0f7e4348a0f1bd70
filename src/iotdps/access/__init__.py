"""Access to the management API: shared access policies, their rights, and the two ways a
request proves one (a SharedAccessSignature token, or a console session).

Transport-free and on the floor under the adapters: the management API (iotdps.api) checks
every route with `AccessPolicies.authorize`, the console (iotdps.web) signs operators in
against the same policies, the remote CLI signs its requests with `make_service_sas`, and the
server's wiring loads the policy file. None of them imports another for it.

    rights.py    Permission, the policies made at first start, AccessPolicy (one policy)
    tokens.py    make_service_sas, and the SharedAccessSignature check
    sessions.py  the console's cookie and CSRF names, key_digest, SessionGate
    policies.py  AccessPolicies: access-policies.json, authenticate, authorize
"""

from __future__ import annotations

from iotdps.access.policies import POLICIES_FILE, AccessPolicies
from iotdps.access.rights import (
    DEFAULT_POLICIES,
    HUB_OWNER_POLICY,
    HUB_POLICIES,
    HUB_RIGHTS,
    OWNER_POLICY,
    AccessPolicy,
    Permission,
)
from iotdps.access.sessions import CSRF_HEADER, SESSION_COOKIE, SessionGate, key_digest
from iotdps.access.tokens import make_service_sas

__all__ = [
    "CSRF_HEADER",
    "DEFAULT_POLICIES",
    "HUB_OWNER_POLICY",
    "HUB_POLICIES",
    "HUB_RIGHTS",
    "OWNER_POLICY",
    "POLICIES_FILE",
    "SESSION_COOKIE",
    "AccessPolicies",
    "AccessPolicy",
    "Permission",
    "SessionGate",
    "key_digest",
    "make_service_sas",
]
