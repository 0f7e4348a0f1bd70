"""SAS tokens: field order, skn, escaping styles, expiry, resource, constant-time verify, derived keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from iotdps.refusals import RefusalReason
from iotdps.sas import SasCheck, SasToken, check_token, derive_device_key, make_sas_token, parse_sas, signature_matches

KEY = base64.b64encode(b"k" * 32).decode()
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SE = int(NOW.timestamp()) + 60


def _parsed(token: str) -> SasToken:
    parsed = parse_sas(token)
    assert isinstance(parsed, SasToken), parsed
    return parsed


def test_python_sdk_form_verifies() -> None:
    token = _parsed(make_sas_token("0ne00ABC", "dev-1", KEY, SE))
    assert token.sr == "0ne00ABC%2Fregistrations%2Fdev-1" and token.skn is None
    assert signature_matches(token, KEY)
    assert check_token(token, "0ne00ABC", "dev-1", NOW) is None


def test_fields_in_any_order_with_skn_and_lower_case_escapes() -> None:
    sr = quote("0ne00ABC/registrations/dev-1", safe="").replace("%2F", "%2f")
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), f"{sr}\n{SE}".encode(), hashlib.sha256).digest()).decode()
    token = _parsed(f"SharedAccessSignature sig={quote(sig, safe='')}&se={SE}&skn=registration&sr={sr}")
    assert signature_matches(token, KEY)  # signed over the raw, lower-case-escaped sr
    assert check_token(token, "0NE00abc", "DEV-1", NOW) is None  # decoded sr compared case-insensitively
    lower = _parsed(make_sas_token("0ne00ABC", "dev-1", KEY, SE, lower_case_escapes=True))
    assert lower.sr.count("%2f") == 2 and signature_matches(lower, KEY)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("SharedAccessSignature sr=a&sig=b", RefusalReason.SAS_MALFORMED),
        ("SharedAccessSignature sr=a&sig=%%%&se=1", RefusalReason.SAS_MALFORMED),
        ("SharedAccessSignature sr=a&sig=YWJj&se=1", RefusalReason.SAS_MALFORMED),  # not 32 bytes
        ("SharedAccessSignature sr=a&sr=b&sig=YWJj&se=1", RefusalReason.SAS_MALFORMED),
        ("SharedAccessSignature sr=a&sig&se=1", RefusalReason.SAS_MALFORMED),
    ],
)
def test_malformed(token: str, reason: RefusalReason) -> None:
    parsed = parse_sas(token)
    assert isinstance(parsed, SasCheck) and parsed.reason is reason


def test_expired_wrong_resource_and_skn() -> None:
    old = _parsed(make_sas_token("s", "dev-1", KEY, int(NOW.timestamp()) - 1))
    assert check_token(old, "s", "dev-1", NOW).reason is RefusalReason.SAS_EXPIRED  # type: ignore[union-attr]
    other = _parsed(make_sas_token("s", "dev-2", KEY, SE))
    assert check_token(other, "s", "dev-1", NOW).reason is RefusalReason.SAS_WRONG_RESOURCE  # type: ignore[union-attr]
    skn = _parsed(make_sas_token("s", "dev-1", KEY, SE, skn="iothubowner"))
    assert check_token(skn, "s", "dev-1", NOW).reason is RefusalReason.SAS_MALFORMED  # type: ignore[union-attr]


def test_lifetime_beyond_the_maximum_is_refused() -> None:
    now = int(NOW.timestamp())
    day = _parsed(make_sas_token("s", "dev-1", KEY, now + 24 * 3600))
    assert check_token(day, "s", "dev-1", NOW) is None  # the default maximum, inclusive
    longer = _parsed(make_sas_token("s", "dev-1", KEY, now + 24 * 3600 + 1))
    assert check_token(longer, "s", "dev-1", NOW).reason is RefusalReason.SAS_LIFETIME_TOO_LONG  # type: ignore[union-attr]
    hour = _parsed(make_sas_token("s", "dev-1", KEY, now + 3601))
    assert check_token(hour, "s", "dev-1", NOW, max_lifetime=3600).reason is RefusalReason.SAS_LIFETIME_TOO_LONG  # type: ignore[union-attr]


def test_wrong_key_and_tampered_expiry_fail() -> None:
    token = _parsed(make_sas_token("s", "dev-1", KEY, SE))
    assert not signature_matches(token, base64.b64encode(b"x" * 32).decode())
    assert not signature_matches(SasToken(token.sr, token.signature, SE + 1), KEY)
    assert "signature" not in repr(token) and str(token.signature) not in repr(token)


def test_derived_key_is_hmac_of_registration_id() -> None:
    expected = base64.b64encode(hmac.new(b"k" * 32, b"dev-7", hashlib.sha256).digest()).decode()
    assert derive_device_key(KEY, "dev-7") == expected
    token = _parsed(make_sas_token("s", "dev-7", expected, SE))
    assert signature_matches(token, derive_device_key(KEY, "dev-7"))
    assert not signature_matches(token, KEY)  # the group key itself is never accepted
