"""Compact JSON out of the process, through orjson: stored documents, telemetry properties and
the DPS replies a device reads.

Why orjson: the standard library's encoder cost 8-16 us per document on this machine against
0.4-1.4 us for orjson, and each registration writes two documents and a reply, each telemetry
message one properties object. Counted with bench/instructions.py (bench/PROFILE.md, round 7):
fewer server instructions per registration and per telemetry message. Parsing stays with the
standard library (iotdps.jsonload): orjson would turn integers beyond 64 bits into floats and
its errors carry no line and column, for about 0.5% of a registration.

What a caller gets is what `json.dumps(value, separators=(",", ":"))` gave, except:
- characters beyond ASCII are written as UTF-8 rather than `\\u` escapes (the same JSON);
- a float's exponent is written without padding (`5e-8` where the standard library writes
  `5e-08`; the same number);
- NaN and infinities are written as `null`. None can come from outside: iotdps.jsonload refuses
  them (NaN, Infinity and numbers such as 1e999 that overflow to infinity).
Values orjson refuses (integers beyond 64 bits, keys that are not strings, strings holding lone
surrogates, datetimes and dataclasses, nesting deeper than 254) go to the standard library,
which writes them, or refuses them, as before: an unusual document costs more, it never fails
where it used to succeed, and what the standard library refused is still refused.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_text"]

# The standard library refuses datetimes and dataclasses; orjson would write them. Passing
# them through (to no `default`) makes orjson refuse them too, and the fallback says why.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _stdlib(value: Any) -> str:
    # ensure_ascii: a lone surrogate becomes an escape, which UTF-8 (and the databases) accept.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> bytes:
    """`value` as compact JSON, UTF-8 bytes. TypeError or ValueError when JSON cannot hold it."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib(value).encode("ascii")


def dumps_text(value: Any) -> str:
    """`value` as compact JSON text. TypeError or ValueError when JSON cannot hold it."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode("utf-8")
    except orjson.JSONEncodeError:
        return _stdlib(value)
