"""Rules every store applies the same way: etag preconditions, continuation tokens, the clock."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from iotdps.errors import InvalidInput, NotFound, PreconditionFailed
from iotdps.jsonload import InvalidJson, load_json

__all__ = [
    "DEFAULT_REFUSAL_LIMIT",
    "DocText",
    "SystemClock",
    "check_delete",
    "check_page_size",
    "check_put",
    "decode_token",
    "dump_doc",
    "encode_token",
    "json_column_text",
]

# Refusals are an operator's recent history, not an audit log: keep the newest this many.
DEFAULT_REFUSAL_LIMIT = 10_000
_MAX_PAGE = 1000


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def check_put(what: str, current_etag: str | None, exists: bool, if_match: str | None) -> None:
    """`if_match` None = create or replace; "*" = any existing record; else that etag."""
    if if_match is None:
        return
    if not exists:
        raise PreconditionFailed(f"{what} does not exist (If-Match {if_match!r})")
    if if_match != "*" and if_match != current_etag:
        raise PreconditionFailed(f"{what} has changed: etag does not match")


def check_delete(what: str, current_etag: str | None, exists: bool, if_match: str | None) -> None:
    if not exists:
        raise NotFound(f"{what} not found")
    if if_match is not None and if_match != "*" and if_match != current_etag:
        raise PreconditionFailed(f"{what} has changed: etag does not match")


def check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= _MAX_PAGE:
        raise InvalidInput(f"page size must be 1..{_MAX_PAGE}")
    return page_size


def encode_token(last_key: str) -> str:
    """Opaque to clients; it is the last key of the page, so pages stay stable under inserts."""
    raw = json.dumps({"k": last_key}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str | None) -> str | None:
    if token is None or token == "":
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = load_json(base64.urlsafe_b64decode(padded.encode("ascii")), what="the continuation token")
        key = value["k"]
    except (binascii.Error, ValueError, UnicodeError, KeyError, TypeError, InvalidJson) as exc:
        raise InvalidInput("invalid continuation token") from exc
    if not isinstance(key, str):
        raise InvalidInput("invalid continuation token")
    return key


class DocText(str):
    """A document `dump_doc` already encoded: the SQL engines store the text as it is."""

    __slots__ = ()


def dump_doc(doc: Mapping[str, Any], what: str) -> DocText:
    """JSON text of a stored document; a value JSON cannot hold (or NaN) is the caller's error."""
    try:
        return DocText(json.dumps(doc, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} holds a value that is not JSON") from exc


def json_column_text(value: Any) -> str:
    """The SQL engines' JSON serializer. A put validates its document by encoding it
    (dump_doc), and that text is what gets stored: encoding it a second time in the column
    type cost a few percent of a registration."""
    if isinstance(value, DocText):
        return value
    return json.dumps(value)
