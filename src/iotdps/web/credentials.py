"""What an operator types at the console's sign-in: a connection string, or a policy name and
its key, checked against the service's access policies.

`HostName` in a connection string is not checked: the key is what proves the policy, and one
operator may paste the DPS string and a hub's string (different host names) together.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from iotdps.access import AccessPolicies, key_digest
from iotdps.errors import InvalidInput, Unauthorized
from iotdps.secret import Secret

__all__ = ["MAX_CREDENTIALS", "Credential", "parse_credentials", "prove"]

MAX_CREDENTIALS = 5
_MAX_TEXT = 1024
# Compared against when the policy name is unknown, so that an unknown name costs the same.
_DUMMY = base64.b64encode(bytes(32)).decode("ascii")


@dataclass(frozen=True, slots=True)
class Credential:
    policy: str
    key: Secret[str]


def _from_connection_string(text: str) -> Credential:
    fields: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput("a connection string is HostName=...;SharedAccessKeyName=...;SharedAccessKey=...")
        fields[name.strip().lower()] = value.strip()
    policy, key = fields.get("sharedaccesskeyname"), fields.get("sharedaccesskey")
    if not policy or not key:
        raise InvalidInput("the connection string needs SharedAccessKeyName and SharedAccessKey")
    return Credential(policy, Secret(key))


def _one(item: object) -> Credential:
    if not isinstance(item, Mapping):
        raise InvalidInput("each credential is an object: {connectionString} or {policyName, key}")
    text, policy, key = item.get("connectionString"), item.get("policyName"), item.get("key")
    for name, value in (("connectionString", text), ("policyName", policy), ("key", key)):
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_TEXT):
            raise InvalidInput(f"{name} must be a string of at most {_MAX_TEXT} characters")
    if text:
        return _from_connection_string(str(text))
    if policy and key:
        return Credential(str(policy).strip(), Secret(str(key).strip()))
    raise InvalidInput("give a connection string, or a policy name and its key")


def parse_credentials(doc: object) -> list[Credential]:
    """`{"credentials": [...]}` (1..MAX_CREDENTIALS items) or one credential's fields at the top."""
    if not isinstance(doc, Mapping):
        raise InvalidInput("the sign-in body must be a JSON object")
    items = doc.get("credentials")
    if items is None:
        return [_one(doc)]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_CREDENTIALS:
        raise InvalidInput(f"credentials must be a list of 1..{MAX_CREDENTIALS} items")
    return [_one(item) for item in items]


def _key_matches(given: str, stored: str) -> bool:
    try:
        raw_given = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raw_given = given.encode("utf-8", "replace")
    return hmac.compare_digest(raw_given, base64.b64decode(stored))


def prove(policies: AccessPolicies, credentials: list[Credential]) -> dict[str, str]:
    """Policy name -> key digest for credentials whose key is the policy's primary or secondary
    key; raises Unauthorized (the same words whatever was wrong) when any one is not."""
    proven: dict[str, str] = {}
    for credential in credentials:
        try:
            policy = policies.get(credential.policy)
            keys = (policy.primary_key.reveal(), policy.secondary_key.reveal())
        except InvalidInput:
            policy, keys = None, (_DUMMY, _DUMMY)
        given = credential.key.reveal()
        # Both keys always compared, no early exit: the time does not say which one matched.
        matches = [_key_matches(given, stored) for stored in keys]
        if policy is None or not any(matches):
            raise Unauthorized("the policy name or key is not right")
        proven[policy.name] = key_digest(keys[matches.index(True)])
    return proven
