"""Rules every store applies the same way: etag preconditions, continuation tokens, page and
limit bounds, stored JSON text, refusal retention. (The clock is the floor's: ports.SystemClock.)"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from iotdps.errors import InvalidInput, NotFound, PreconditionFailed
from iotdps.jsondump import dumps_text
from iotdps.jsonload import InvalidJson, load_json
from iotdps.ports import Refusal

__all__ = [
    "DEFAULT_REFUSAL_LIMIT",
    "REFUSAL_ID_LENGTH",
    "REFUSAL_PEER_LENGTH",
    "DocText",
    "check_delete",
    "check_page_size",
    "check_put",
    "check_refusal_limit",
    "decode_token",
    "dump_doc",
    "encode_token",
    "json_column_text",
    "merged_refusal",
    "refusal_key",
    "refusal_source",
    "retained_refusals",
]

# Refusals are an operator's recent history, not an audit log: keep this many entries (each
# entry counts every attempt with the same reason, registration id and peer).
DEFAULT_REFUSAL_LIMIT = 10_000
# A refused registration id may be anything a device sent; it is kept cut to the column's size.
REFUSAL_ID_LENGTH = 128
REFUSAL_PEER_LENGTH = 64  # an IPv6 address with a zone fits
_MAX_PAGE = 1000


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


def check_refusal_limit(limit: int) -> int:
    if limit < 1:
        raise InvalidInput("limit must be at least 1")
    return limit


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
    """JSON text of a stored document (iotdps.jsondump); a value JSON cannot hold is the caller's
    error. (NaN and infinities cannot come from outside: iotdps.jsonload refuses them.)"""
    try:
        return DocText(dumps_text(doc))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} holds a value that is not JSON") from exc


def json_column_text(value: Any) -> str:
    """The SQL engines' JSON serializer. A put validates its document by encoding it
    (dump_doc), and that text is what gets stored: encoding it a second time in the column
    type cost a few percent of a registration."""
    if isinstance(value, DocText):
        return value
    return dumps_text(value)


# --------------------------------------------------------------------------- refusal retention
#
# Why: an unauthenticated peer can make refusals as fast as it can open connections. When the
# history kept the newest N attempts, ~10,000 junk CONNECTs evicted every real refusal (a
# forged certificate among them) in half a minute. Two rules keep what an operator needs:
#
# 1. Aggregation. Attempts with the same (reason, registration id, peer address) are one entry
#    with a count and first/last seen, so a device (or attacker) retrying costs one entry.
# 2. Fair eviction. Past the limit, entries are ranked within their (source, reason) pair,
#    newest first, and kept by that rank: every pair's newest entry before any pair's second,
#    and so on (ties: the more recent first). A source is one IPv4 address or one IPv6 /64
#    (what one customer network gets). A flood from one source, varying its registration ids,
#    only rotates its own entries; to evict an entry of rank 1 it takes more than `limit`
#    distinct (source, reason) pairs newer than it. With ~20 reasons and the default 10,000,
#    that is hundreds of addresses or /64s, and the refusals of those are then what is kept.


def refusal_source(peer: str | None) -> str:
    """The network a peer address counts as for fair eviction: the IPv4 address itself, the
    /64 of an IPv6 address (an IPv4-mapped one is its IPv4 address); "" when there is no peer."""
    if not peer:
        return ""
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer[:REFUSAL_PEER_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def refusal_key(refusal: Refusal) -> tuple[str, str, str]:
    """The (reason, registration id, peer) an attempt is counted under, cut to the columns."""
    return (refusal.reason, refusal.registration_id[:REFUSAL_ID_LENGTH], (refusal.peer or "")[:REFUSAL_PEER_LENGTH])


def merged_refusal(current: Refusal | None, attempt: Refusal) -> Refusal:
    """`attempt` counted into the entry `current` of its key (None: a new entry)."""
    _, registration_id, peer = refusal_key(attempt)
    if current is None:
        return dataclasses.replace(
            attempt, registration_id=registration_id, peer=peer or None, first_at=attempt.first_at or attempt.at
        )
    return dataclasses.replace(
        attempt,
        registration_id=registration_id,
        peer=peer or None,
        count=current.count + attempt.count,
        first_at=current.first_seen,
    )


_K = TypeVar("_K")


def retained_refusals(entries: Iterable[tuple[_K, int, Refusal]], limit: int) -> list[tuple[_K, int, Refusal]]:
    """The (key, insertion number, entry) triples fair eviction keeps, at most `limit` of them,
    latest attempt first. The SQL store runs the same ranking as one window query."""
    pairs: dict[tuple[str, str], list[tuple[_K, int, Refusal]]] = defaultdict(list)
    for entry in entries:
        pairs[(refusal_source(entry[2].peer), entry[2].reason)].append(entry)
    ranked: list[tuple[int, tuple[_K, int, Refusal]]] = []
    for members in pairs.values():
        members.sort(key=lambda e: (e[2].at, e[1]), reverse=True)
        ranked.extend(enumerate(members))
    # By rank; within a rank the latest first (two stable sorts: recency, then rank).
    ranked.sort(key=lambda r: (r[1][2].at, r[1][1]), reverse=True)
    ranked.sort(key=lambda r: r[0])
    kept = [entry for _, entry in ranked[:limit]]
    kept.sort(key=lambda e: (e[2].at, e[1]), reverse=True)
    return kept
