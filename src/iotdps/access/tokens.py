"""SharedAccessSignature tokens of the management API: making one, and checking one.

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

The check takes the Authorization header as a string: it knows no HTTP framework, so the API
(aiohttp) and anything else that must check a token share it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from iotdps.access.rights import AccessPolicy, Permission
from iotdps.errors import Unauthorized

__all__ = ["MAX_TOKEN_LIFETIME", "make_service_sas", "verify_token"]

# The name the token refusals have always been logged under (operators filter on it).
log = logging.getLogger("iotdps.api.auth")

# Tokens valid further ahead than this are refused: a leaked token must not live for years.
MAX_TOKEN_LIFETIME = 366 * 24 * 3600
_GENERIC = "the SharedAccessSignature is not valid for this service"


def make_service_sas(resource: str, policy: str, key: str, ttl: int = 3600, *, now: float | None = None) -> str:
    """A service token the way the Azure SDKs build it (url-encoded `sr`, `quote_plus` signing)."""
    expiry = int((time.time() if now is None else now) + ttl)
    encoded = quote_plus(resource)
    sig = base64.b64encode(
        hmac.new(base64.b64decode(key), f"{encoded}\n{expiry}".encode(), hashlib.sha256).digest()
    ).decode("ascii")
    return f"SharedAccessSignature sr={encoded}&sig={quote_plus(sig)}&se={expiry}&skn={quote_plus(policy)}"


def verify_token(
    policies: Mapping[str, AccessPolicy],
    header: str | None,
    *,
    host_names: Sequence[str],
    path: str,
    needed: Permission | None,
    now: float,
) -> AccessPolicy:
    """The policy of `policies` (by name) that signed `header`, when the token is valid for
    `path` and grants `needed`; else Unauthorized (the same safe message whatever the reason)."""
    try:
        return _check(policies, header, host_names, path, needed, now)
    except _Refused as exc:
        log.info("management API token refused: %s", exc)
        raise Unauthorized(exc.public) from None


class _Refused(Exception):
    def __init__(self, why: str, public: str) -> None:
        super().__init__(why)
        self.public = public


def _check(
    policies: Mapping[str, AccessPolicy],
    header: str | None,
    host_names: Sequence[str],
    path: str,
    needed: Permission | None,
    now: float,
) -> AccessPolicy:
    if not header:
        raise _Refused("no Authorization header", "an Authorization header with a SharedAccessSignature is required")
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
    if expiry > now + MAX_TOKEN_LIFETIME:
        raise _Refused("token lives too long", "the SharedAccessSignature expires too far in the future")
    policy = policies.get(unquote_plus(raw["skn"]))
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
