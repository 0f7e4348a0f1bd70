"""Who may do what: the rights of a shared access policy and the policies made at first start.

A policy is what Azure calls a SharedAccessSignatureAuthorizationRule: a key name, a primary
and a secondary key (base64 of 32 random bytes) and rights. This module is the policy as a
value (`AccessPolicy`, its JSON form in access-policies.json) and nothing else: no file, no
clock, no transport.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from iotdps.errors import InvalidInput
from iotdps.secret import Secret

__all__ = [
    "DEFAULT_POLICIES",
    "HUB_OWNER_POLICY",
    "HUB_POLICIES",
    "HUB_RIGHTS",
    "OWNER_POLICY",
    "AccessPolicy",
    "Permission",
    "new_key",
]

OWNER_POLICY = "provisioningserviceowner"
_KEY_BYTES = 32


class Permission(StrEnum):
    """The rights of a policy, spelled as Azure spells them."""

    SERVICE_CONFIG = "ServiceConfig"
    ENROLLMENT_READ = "EnrollmentRead"
    ENROLLMENT_WRITE = "EnrollmentWrite"
    REGISTRATION_READ = "RegistrationStatusRead"
    REGISTRATION_WRITE = "RegistrationStatusWrite"
    # The IoT hub's rights (the hub service API): the identity registry and cloud-side
    # operations (twin, direct methods, cloud-to-device, reading telemetry).
    REGISTRY_READ = "RegistryRead"
    REGISTRY_WRITE = "RegistryWrite"
    SERVICE_CONNECT = "ServiceConnect"


HUB_OWNER_POLICY = "iothubowner"
_DPS_RIGHTS = frozenset(
    {
        Permission.SERVICE_CONFIG,
        Permission.ENROLLMENT_READ,
        Permission.ENROLLMENT_WRITE,
        Permission.REGISTRATION_READ,
        Permission.REGISTRATION_WRITE,
    }
)
HUB_RIGHTS = frozenset({Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, Permission.SERVICE_CONNECT})
# Policies created at first start. As on Azure, the DPS and the hubs have separate policies:
# the DPS owner (everything of the provisioning service) and two narrower ones for tooling that
# should not change the service configuration; the hub owner (every hub of this server) and a
# service-only one (twin, methods, messages; the registry read-only).
HUB_POLICIES: Mapping[str, frozenset[Permission]] = {
    HUB_OWNER_POLICY: HUB_RIGHTS,
    "service": frozenset({Permission.SERVICE_CONNECT, Permission.REGISTRY_READ}),
}
DEFAULT_POLICIES: Mapping[str, frozenset[Permission]] = {
    OWNER_POLICY: _DPS_RIGHTS,
    "enrollmentread": frozenset({Permission.ENROLLMENT_READ, Permission.REGISTRATION_READ}),
    "enrollmentwrite": frozenset(
        {
            Permission.ENROLLMENT_READ,
            Permission.ENROLLMENT_WRITE,
            Permission.REGISTRATION_READ,
            Permission.REGISTRATION_WRITE,
        }
    ),
    **HUB_POLICIES,
}


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    name: str
    primary_key: Secret[str]
    secondary_key: Secret[str]
    rights: frozenset[Permission]

    def to_json(self) -> dict[str, Any]:
        return {
            "keyName": self.name,
            "primaryKey": self.primary_key.reveal(),
            "secondaryKey": self.secondary_key.reveal(),
            "rights": ", ".join(p.value for p in Permission if p in self.rights),
        }

    @staticmethod
    def from_json(doc: object) -> AccessPolicy:
        if not isinstance(doc, Mapping):
            raise InvalidInput("an access policy must be a JSON object")
        name, primary, secondary, rights = (doc.get(k) for k in ("keyName", "primaryKey", "secondaryKey", "rights"))
        if not isinstance(name, str) or not name:
            raise InvalidInput("an access policy needs a keyName")
        for which, key in (("primaryKey", primary), ("secondaryKey", secondary)):
            if not isinstance(key, str) or not _decodes(key):
                raise InvalidInput(f"access policy {name}: {which} must be base64")
        if not isinstance(rights, str):
            raise InvalidInput(f"access policy {name}: rights must be a comma-separated string")
        parsed: set[Permission] = set()
        for item in (r.strip() for r in rights.split(",")):
            if not item:
                continue
            try:
                parsed.add(Permission(item))
            except ValueError:
                raise InvalidInput(f"access policy {name}: unknown right {item!r}") from None
        return AccessPolicy(name, Secret(str(primary)), Secret(str(secondary)), frozenset(parsed))


def _decodes(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def new_key() -> Secret[str]:
    """A fresh policy key: base64 of 32 random bytes, as Azure generates them."""
    return Secret(base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii"))
