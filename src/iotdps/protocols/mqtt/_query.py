"""Private helpers of the DPS and hub topic modules (dps.py, hub.py): percent-encoded
`key=value&...` strings as the Azure SDKs write them, the status check of a response topic, and
how a device's text is quoted in an error message.

Not `urllib.parse.parse_qsl`: it turns `+` into a space, and the SDKs percent-encode with
`quote` (a literal `+` stays `+`). A key without `=` has the value None; `key=` is "".
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from iotdps.protocols.mqtt.errors import InvalidDeviceRequest

__all__ = ["check_status", "decode_component", "encode_component", "parse_query", "short"]


def decode_component(raw: str, what: str) -> str:
    if "%" not in raw:
        return raw  # the common case on the telemetry path; unquote is comparatively slow
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidDeviceRequest(f"{what} is not valid percent-encoded UTF-8") from None


def encode_component(value: str) -> str:
    """Percent-encode everything outside RFC 3986 unreserved characters (so `/ $ & = ? #`)."""
    return quote(value, safe="")


def parse_query(raw: str, what: str) -> dict[str, str | None]:
    """Decode a query string; empty segments are skipped, duplicate keys are refused."""
    out: dict[str, str | None] = {}
    if not raw:
        return out
    for part in raw.split("&"):
        if not part:
            continue
        key_raw, sep, value_raw = part.partition("=")
        key = decode_component(key_raw, what)
        if key in out:
            raise InvalidDeviceRequest(f"{what} repeats the key {key!r}")
        out[key] = decode_component(value_raw, what) if sep else None
    return out


def short(value: str) -> str:
    """`value` quoted for an error message, cut at 64 characters (a device chooses its length)."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


def check_status(status: int) -> int:
    """`status` when it is an HTTP status code (100..599, not a bool), else ValueError."""
    if isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"status {status!r} is not an HTTP status code")
    return status
