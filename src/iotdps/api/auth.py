"""Shared access policies of the management API, and SharedAccessSignature checks.

A policy is what Azure calls a SharedAccessSignatureAuthorizationRule: a key name, a primary
and a secondary key (base64 of 32 random bytes) and rights. The policies live in
`<data_dir>/access-policies.json` (owner-only, 0600); they are generated at first start and
`iotdps up` shows them once, as connection strings.

Token check (azure-wire-protocol.md 4.1): `SharedAccessSignature sr=..&sig=..&se=..&skn=..`.
The SDKs disagree on what `sr` is, so every form they send is accepted:
- `azure-iothub-provisioningserviceclient` 1.2.0 signs the connection string's HostName
  (`host` or `host:port`), `quote_plus`-ed, and percent-quotes the signature;
- `azure-iot-deviceprovisioning` 1.0.0b1 signs the endpoint exactly as the caller gave it
  (`host`, `host:port` or `https://host:port`), and url-encodes the whole header;
- a resource URI with a path (`host/enrollments`) is a scope: it grants the paths below it,
  segment-wise.
The signed string is the url-encoded `sr`, a newline and `se`; we try the encodings real
clients use (quote_plus, quote, as sent, lower case) against both keys of the named policy,
each with a constant-time compare. Every failure is the same 401 for the caller; the reason
in words goes to the log only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from iotdps.errors import InvalidInput, Unauthorized
from iotdps.fsutil import atomic_write
from iotdps.secret import Secret

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

log = logging.getLogger(__name__)

POLICIES_FILE = "access-policies.json"
OWNER_POLICY = "provisioningserviceowner"
_KEY_BYTES = 32
# Tokens valid further ahead than this are refused: a leaked token must not live for years.
_MAX_TOKEN_LIFETIME = 366 * 24 * 3600


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


def _new_key() -> Secret[str]:
    return Secret(base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii"))


def make_service_sas(resource: str, policy: str, key: str, ttl: int = 3600, *, now: float | None = None) -> str:
    """A service token the way the Azure SDKs build it (url-encoded `sr`, `quote_plus` signing)."""
    expiry = int((time.time() if now is None else now) + ttl)
    encoded = quote_plus(resource)
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key), f"{encoded}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode("ascii")
    return f"SharedAccessSignature sr={encoded}&sig={quote_plus(sig)}&se={expiry}&skn={quote_plus(policy)}"


class AccessPolicies:
    """The named policies of one service. `just_created` is True when `load_or_create` made them
    now (so `iotdps up` shows the keys this once)."""

    def __init__(self, policies: Iterable[AccessPolicy], *, just_created: bool = False) -> None:
        self._policies = {p.name: p for p in policies}
        self.just_created = just_created
        # Policies made by this process (all of them at first start; the hub policies when an
        # older policy file had none): their connection strings are shown this once.
        self.fresh_names: tuple[str, ...] = tuple(sorted(self._policies)) if just_created else ()

    def __repr__(self) -> str:
        return f"AccessPolicies({sorted(self._policies)!r})"

    @classmethod
    def generate(cls, rights: Mapping[str, frozenset[Permission]] = DEFAULT_POLICIES) -> AccessPolicies:
        return cls(
            (AccessPolicy(name, _new_key(), _new_key(), frozenset(r)) for name, r in rights.items()),
            just_created=True,
        )

    @classmethod
    def load(cls, path: Path) -> AccessPolicies:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
        except ValueError:
            raise InvalidInput(f"{path} is not valid JSON") from None
        items = doc.get("policies") if isinstance(doc, Mapping) else None
        if not isinstance(items, list) or not items:
            raise InvalidInput(f"{path} holds no access policies")
        return cls(AccessPolicy.from_json(item) for item in items)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> AccessPolicies:
        """The policies in `<data_dir>/access-policies.json`, generated (mode 0600) when absent."""
        path = Path(data_dir) / POLICIES_FILE
        if path.exists():
            loaded = cls.load(path)
            if not any(p.rights & HUB_RIGHTS for p in loaded._policies.values()):
                # A data dir from before the hub service API: add the hub policies (keeping
                # every existing one) so the hubs are manageable after an upgrade.
                added = [p for p in cls.generate(HUB_POLICIES)._policies.values() if p.name not in loaded._policies]
                loaded._policies.update((p.name, p) for p in added)
                loaded.save(path)
                loaded.fresh_names = tuple(sorted(p.name for p in added))
            return loaded
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        policies = cls.generate()
        policies.save(path)
        return policies

    def save(self, path: Path) -> None:
        doc = {"policies": [p.to_json() for p in self._policies.values()]}
        atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), mode=0o600)

    @property
    def names(self) -> Sequence[str]:
        return sorted(self._policies)

    def get(self, name: str) -> AccessPolicy:
        try:
            return self._policies[name]
        except KeyError:
            raise InvalidInput(f"no access policy named {name!r}") from None

    def connection_string(self, policy: str, host: str) -> str:
        """`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` (the primary key)."""
        found = self.get(policy)
        return f"HostName={host};SharedAccessKeyName={found.name};SharedAccessKey={found.primary_key.reveal()}"

    # ------------------------------------------------------------------ token check

    def authenticate(
        self,
        header: str | None,
        *,
        host_names: Sequence[str],
        path: str,
        needed: Permission | None,
        now: float | None = None,
    ) -> AccessPolicy:
        """The policy that signed `header`, when the token is valid for `path` and grants
        `needed`; else Unauthorized (the same safe message whatever the reason)."""
        try:
            return self._check(header, host_names, path, needed, time.time() if now is None else now)
        except _Refused as exc:
            log.info("management API token refused: %s", exc)
            raise Unauthorized(exc.public) from None

    def _check(
        self, header: str | None, host_names: Sequence[str], path: str, needed: Permission | None, now: float
    ) -> AccessPolicy:
        if not header:
            raise _Refused(
                "no Authorization header", "an Authorization header with a SharedAccessSignature is required"
            )
        scheme, _, rest = header.strip().partition(" ")
        if scheme != "SharedAccessSignature" or not rest:
            raise _Refused("not a SharedAccessSignature", "the Authorization header is not a SharedAccessSignature")
        raw: dict[str, str] = {}
        for part in rest.strip().split("&"):
            key, sep, value = part.partition("=")
            if not sep or key in raw:
                raise _Refused("malformed token", "the SharedAccessSignature is malformed")
            raw[key] = value
        if not {"sr", "sig", "se", "skn"} <= raw.keys():
            raise _Refused("token lacks sr, sig, se or skn", "the SharedAccessSignature needs sr, sig, se and skn")
        try:
            expiry = int(unquote(raw["se"]))
        except ValueError:
            raise _Refused("se is not a number", "the SharedAccessSignature is malformed") from None
        if expiry < now:
            raise _Refused("token expired", "the SharedAccessSignature has expired")
        if expiry > now + _MAX_TOKEN_LIFETIME:
            raise _Refused("token lives too long", "the SharedAccessSignature expires too far in the future")
        policy = self._policies.get(unquote_plus(raw["skn"]))
        if policy is None:
            raise _Refused("unknown policy", _GENERIC)
        resource = unquote_plus(raw["sr"])
        if not _resource_covers(resource, host_names, path):
            raise _Refused(f"sr {resource!r} does not name this service", _GENERIC)
        if not _signature_ok(policy, raw["sr"], resource, raw["sig"], raw["se"]):
            raise _Refused("bad signature", _GENERIC)
        if needed is not None and needed not in policy.rights:
            raise _Refused(
                f"policy {policy.name} lacks {needed.value}",
                f"access policy {policy.name} does not grant {needed.value}",
            )
        return policy


    # ------------------------------------------------------------------ browser sessions

    def authorize(
        self,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        method: str,
        *,
        host_names: Sequence[str],
        path: str,
        needed: Permission | None,
        sessions: SessionGate | None,
    ) -> AccessPolicy:
        """The policy a request acts as: its SharedAccessSignature's, or, with no Authorization
        header, the console session its cookie names (iotdps.web). A session stands for the
        policies whose keys the operator gave at login and holds the same rights, checked
        here route by route like a token's; a change (any method but GET/HEAD/OPTIONS) must
        also carry the session's CSRF token (403 without it). A policy whose keys were
        rotated since the login no longer counts for the session."""
        header = headers.get("Authorization")
        cookie = cookies.get(SESSION_COOKIE)
        if header or sessions is None or not cookie:
            return self.authenticate(header, host_names=host_names, path=path, needed=needed)
        proven = sessions.proven(cookie, headers.get(CSRF_HEADER), change=method.upper() not in _SAFE_METHODS)
        for name, digest in sorted(proven.items()):
            policy = self._policies.get(name)
            if policy is None or not any(
                hmac.compare_digest(digest, key_digest(k.reveal())) for k in (policy.primary_key, policy.secondary_key)
            ):
                continue
            if needed is None or needed in policy.rights:
                return policy
        wanted = needed.value if needed is not None else "access"
        log.info("console session refused: its policies (%s) do not grant %s", ", ".join(sorted(proven)), wanted)
        raise Unauthorized(f"the policies of this session do not grant {wanted}")


# The console's session cookie: `__Host-` makes the browser insist on Secure, Path=/ and no
# Domain, so no other host (or plain-HTTP origin) can set or read it.
SESSION_COOKIE = "__Host-iotdps-session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


_GENERIC = "the SharedAccessSignature is not valid for this service"


class _Refused(Exception):
    def __init__(self, why: str, public: str) -> None:
        super().__init__(why)
        self.public = public


def _resource_covers(resource: str, host_names: Sequence[str], path: str) -> bool:
    """`sr` names one of our hosts (any port, with or without a scheme), and its path, if any,
    is a segment-wise prefix of the request path."""
    text = resource.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    if host not in {h.lower().strip("[]") for h in host_names}:
        return False
    scope = [s for s in parts.path.split("/") if s]
    wanted = [s for s in path.split("/") if s]
    return [s.lower() for s in scope] == [s.lower() for s in wanted[: len(scope)]]


def _signature_ok(policy: AccessPolicy, sr_sent: str, resource: str, sig_sent: str, se_sent: str) -> bool:
    expiry = unquote(se_sent)
    candidates = {quote_plus(resource), quote(resource, safe=""), sr_sent, resource}
    candidates |= {c.lower() for c in candidates}
    signatures = {unquote(sig_sent), unquote_plus(sig_sent)}
    ok = False
    for key in (policy.primary_key, policy.secondary_key):
        secret = base64.b64decode(key.reveal())
        for signed in candidates:
            digest = hmac.new(secret, f"{signed}\n{expiry}".encode(), hashlib.sha256).digest()
            expected = base64.b64encode(digest).decode("ascii")
            for sig in signatures:
                # No early exit: the time taken does not depend on which candidate matched.
                ok |= hmac.compare_digest(expected.encode(), sig.encode())
    return ok
