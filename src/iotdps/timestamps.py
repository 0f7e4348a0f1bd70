"""Time as the Azure APIs write it: UTC, ISO-8601 with seven fractional digits and `Z`.

Every record's `createdDateTimeUtc`, the device error body's `timestampUtc` and the hub's
message times go through `format_time`; `parse_time` reads DPS's seven digits back (Python's
parser takes at most six).
"""

from __future__ import annotations

from datetime import UTC, datetime

from iotdps.errors import InvalidInput

__all__ = ["format_time", "parse_time", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    """ISO-8601 in UTC with 7 fractional digits and `Z`, as real DPS writes timestamps."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def parse_time(value: str) -> datetime:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits; DPS writes 7.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not an ISO-8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
