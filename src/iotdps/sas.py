"""Shared access signatures: parse, check, sign and verify SAS tokens; group-derived device keys.

A leaf under the core: symmetric-key attestation, enrollment precedence (which group's derived
key verifies a token), the hub's CONNECT and our own device client all sign or verify here.

Token: `SharedAccessSignature sr={urlenc(scope/registrations/id)}&sig={urlenc(b64 hmac)}&se={unix}
[&skn=registration]`, fields in any order (SDKs differ). The signature is checked over the `sr`
string exactly as received, because SDKs percent-encode it differently (`%2F` vs `%2f`, quote vs
quote_plus) and the device signed what it sent; only after that is `sr` decoded and compared,
case-insensitively, with the resource the device claims (azure-wire-protocol.md 1.3).

Lifetime: a token is a bearer credential until its `se`, so one valid for years is a leaked key
in all but name. Tokens valid further ahead than a maximum are refused, at DPS and at the hub
(hub.auth). The default, one day, is 24 times what every Azure device SDK sends (azure-iot-device
2.14.0 signs DPS and hub tokens for `sastoken_ttl` = 3600 s and renews them), which leaves room
for a device whose clock runs up to 23 hours fast, and bounds a stolen token to a day.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote

from iotdps.refusals import RefusalReason

__all__ = [
    "DEFAULT_TOKEN_MAX_LIFETIME",
    "SAS_PREFIX",
    "SasCheck",
    "SasToken",
    "check_token",
    "derive_device_key",
    "lifetime_problem",
    "make_device_token",
    "make_sas_token",
    "parse_sas",
    "signature_matches",
]

SAS_PREFIX = "SharedAccessSignature "
DEFAULT_TOKEN_MAX_LIFETIME = 24 * 3600
_DPS_SKN = "registration"


@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed token. `sr` is kept raw (as received): the signature covers those bytes."""

    sr: str
    signature: bytes
    expiry: int
    skn: str | None = None

    def __repr__(self) -> str:  # the signature is a credential for its lifetime: never print it
        return f"SasToken(sr={self.sr!r}, expiry={self.expiry}, skn={self.skn!r})"


@dataclass(frozen=True, slots=True)
class SasCheck:
    """A refusal found while checking a token before any key is tried."""

    reason: RefusalReason
    message: str


def parse_sas(token: str) -> SasToken | SasCheck:
    text = token.strip()
    if text.startswith(SAS_PREFIX):
        text = text[len(SAS_PREFIX) :]
    elif text.lower().startswith(SAS_PREFIX.lower()):
        text = text[len(SAS_PREFIX) :]
    fields: dict[str, str] = {}
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            return SasCheck(RefusalReason.SAS_MALFORMED, "SAS token field without '='")
        if name in fields:
            return SasCheck(RefusalReason.SAS_MALFORMED, f"SAS token repeats field {name!r}")
        fields[name] = value
    missing = [f for f in ("sr", "sig", "se") if not fields.get(f)]
    if missing:
        return SasCheck(RefusalReason.SAS_MALFORMED, f"SAS token lacks {', '.join(missing)}")
    try:
        signature = base64.b64decode(unquote(fields["sig"]), validate=True)
    except (binascii.Error, ValueError):
        return SasCheck(RefusalReason.SAS_MALFORMED, "SAS signature is not base64")
    if len(signature) != hashlib.sha256().digest_size:
        return SasCheck(RefusalReason.SAS_MALFORMED, "SAS signature is not an HMAC-SHA256")
    se = fields["se"]
    if not se.isascii() or not se.isdigit() or len(se) > 12:
        return SasCheck(RefusalReason.SAS_MALFORMED, "SAS expiry (se) is not Unix seconds")
    return SasToken(sr=fields["sr"], signature=signature, expiry=int(se), skn=fields.get("skn"))


def lifetime_problem(expiry: int, now: datetime, max_lifetime: int) -> str | None:
    """Words when a token expiring at `expiry` is valid further ahead than `max_lifetime` seconds."""
    ahead = expiry - int(now.timestamp())
    if ahead > max_lifetime:
        return (
            f"SAS token valid for {ahead} s more, too far ahead: at most {max_lifetime} s are accepted "
            "(auth.device_token_max_lifetime)"
        )
    return None


def check_token(
    token: SasToken,
    id_scope: str,
    registration_id: str,
    now: datetime,
    max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME,
) -> SasCheck | None:
    """Resource, skn, expiry and lifetime: everything that does not need a key."""
    if token.skn is not None and unquote(token.skn) != _DPS_SKN:
        return SasCheck(RefusalReason.SAS_MALFORMED, f"SAS skn must be {_DPS_SKN!r} when present")
    expected = f"{id_scope}/registrations/{registration_id}"
    if unquote(token.sr).lower() != expected.lower():
        return SasCheck(
            RefusalReason.SAS_WRONG_RESOURCE,
            f"SAS resource {unquote(token.sr)!r} is not {expected!r}",
        )
    if token.expiry < int(now.timestamp()):
        return SasCheck(RefusalReason.SAS_EXPIRED, f"SAS token expired at Unix time {token.expiry}")
    too_long = lifetime_problem(token.expiry, now, max_lifetime)
    if too_long is not None:
        return SasCheck(RefusalReason.SAS_LIFETIME_TOO_LONG, too_long)
    return None


def _sign(key_b64: str, sr: str, expiry: int) -> bytes:
    key = base64.b64decode(key_b64)
    return hmac.new(key, f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()


def signature_matches(token: SasToken, key_b64: str) -> bool:
    """Constant-time check of the token's signature with one base64 key."""
    try:
        expected = _sign(key_b64, token.sr, token.expiry)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected, token.signature)


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """The key a group device signs with: base64(HMAC-SHA256(group key, registration id))."""
    key = base64.b64decode(group_key_b64)
    return base64.b64encode(hmac.new(key, registration_id.encode(), hashlib.sha256).digest()).decode("ascii")


def make_device_token(resource: str, key_b64: str, expiry: int) -> str:
    """A device token for `resource` (`{hub}/devices/{id}` for a hub, as the device SDKs sign
    it: the url-encoded resource, a newline and the expiry; no skn)."""
    sr = quote(resource, safe="")
    sig = base64.b64encode(_sign(key_b64, sr, expiry)).decode("ascii")
    return f"{SAS_PREFIX}sr={sr}&sig={quote(sig, safe='')}&se={expiry}"


def make_sas_token(
    id_scope: str,
    registration_id: str,
    key_b64: str,
    expiry: int,
    *,
    skn: str | None = None,
    lower_case_escapes: bool = False,
) -> str:
    """A DPS SAS token as the Azure SDKs build it (for tests and our own device client).

    `lower_case_escapes` imitates SDKs that write `%2f`; the signature then covers that form.
    """
    sr = quote(f"{id_scope}/registrations/{registration_id}", safe="")
    if lower_case_escapes:
        sr = sr.replace("%2F", "%2f")
    sig = base64.b64encode(_sign(key_b64, sr, expiry)).decode("ascii")
    token = f"{SAS_PREFIX}sr={sr}&sig={quote(sig, safe='')}&se={expiry}"
    if skn is not None:
        token += f"&skn={skn}"
    return token
