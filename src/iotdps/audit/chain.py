"""Entries and the hash chain.

Each entry's `hash` is SHA-256 over its canonical JSON, which includes `prev`, the hash of the
entry before it (`GENESIS` for the first entry ever written). Changing any field of an entry
changes its hash; removing or moving an entry breaks the `prev` link of the entry after it.
`seq` (the storage order) is deliberately outside the hash: verification follows the links, so
an entry moved to another place (its seq swapped with another's) reads as moved, not merely as
changed (verify.py).

The canonical form is fixed forever: keys sorted, no spaces, ASCII only, the time as ISO-8601
UTC with microseconds, `detail` as the exact JSON text stored. Entries written by any node and
any store hash alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from iotdps.audit.actions import check_action, check_action_filter
from iotdps.errors import InvalidInput

__all__ = [
    "ACTOR_KINDS",
    "GENESIS",
    "Actor",
    "AuditDraft",
    "AuditEntry",
    "AuditQuery",
    "canonical",
    "dump_detail",
    "entry_hash",
    "link",
]

GENESIS = "0" * 64
MAX_TARGET = 300
MAX_ACTOR = 200
# Who may appear as an actor: a management API policy (token), the console acting as a policy
# (session), a user on the machine (the local CLI), or the server itself (startup config).
ACTOR_KINDS = ("policy", "console", "local", "system")
_NAME = re.compile(rf"[^\x00-\x1f\x7f]{{1,{MAX_ACTOR}}}")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: `kind` is one of ACTOR_KINDS, `name` the policy or user name."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise InvalidInput(f"an actor is one of {', '.join(ACTOR_KINDS)}, not {self.kind!r}")
        if not _NAME.fullmatch(self.name):
            raise InvalidInput("an actor's name is 1..200 printable characters")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @staticmethod
    def parse(text: str) -> Actor:
        kind, sep, name = text.partition(":")
        if not sep:
            raise InvalidInput(f"an actor is written kind:name ({', '.join(ACTOR_KINDS)}), not {text[:80]!r}")
        return Actor(kind, name)


def dump_detail(detail: Mapping[str, Any] | None) -> str:
    """The canonical JSON text of an entry's detail (what is stored and hashed)."""
    try:
        return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"an audit detail must be plain JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """What a change hands the log: the store adds seq, time and the chain."""

    actor: Actor
    action: str
    target: str
    before: str | None = None  # record_digest of the record before the change (None: it did not exist)
    after: str | None = None  # ... and after it (None: deleted)
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_action(self.action)
        if not self.target or len(self.target) > MAX_TARGET:
            raise InvalidInput(f"an audit target is 1..{MAX_TARGET} characters")
        dump_detail(self.detail)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored entry. Fields are kept as stored (strings), so that verification can read a
    tampered row without failing on it."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    before: str | None
    after: str | None
    detail: str  # canonical JSON text
    prev: str
    hash: str

    def detail_doc(self) -> Any:
        try:
            return json.loads(self.detail)
        except ValueError:
            return self.detail

    @staticmethod
    def from_json(doc: Any) -> AuditEntry:
        """An entry as `to_json` wrote it (the management API's answer); InvalidInput when it
        is not one."""
        try:
            detail = doc["detail"]
            return AuditEntry(
                seq=int(doc["seq"]),
                at=datetime.fromisoformat(str(doc["at"]).replace("Z", "+00:00")),
                actor=str(doc["actor"]),
                action=str(doc["action"]),
                target=str(doc["target"]),
                before=None if doc.get("before") is None else str(doc["before"]),
                after=None if doc.get("after") is None else str(doc["after"]),
                detail=detail if isinstance(detail, str) else dump_detail(detail),
                prev=str(doc["prev"]),
                hash=str(doc["hash"]),
            )
        except (KeyError, TypeError, ValueError, InvalidInput) as exc:
            raise InvalidInput(f"not an audit entry: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _time(self.at),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "before": self.before,
            "after": self.after,
            "detail": self.detail_doc(),
            "prev": self.prev,
            "hash": self.hash,
        }


def _time(at: datetime) -> str:
    utc = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: AuditEntry) -> str:
    return json.dumps(
        {
            "at": _time(entry.at),
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "before": entry.before,
            "after": entry.after,
            "detail": entry.detail,
            "prev": entry.prev,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )


def entry_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(canonical(entry).encode("ascii")).hexdigest()


def link(draft: AuditDraft, *, seq: int, at: datetime, prev: str) -> AuditEntry:
    """The entry `draft` becomes after the one whose hash is `prev`. Times are kept to the
    microsecond, which every store keeps exactly."""
    utc = at.astimezone(UTC)
    unhashed = AuditEntry(
        seq,
        utc,
        str(draft.actor),
        draft.action,
        draft.target,
        draft.before,
        draft.after,
        dump_detail(draft.detail),
        prev,
        "",
    )
    return AuditEntry(**{**_fields(unhashed), "hash": entry_hash(unhashed)})


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in AuditEntry.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A filter over the log, ascending seq. `action` is a whole action or a dotted prefix;
    `since` an inclusive time; `after` a seq to continue after (paging)."""

    action: str | None = None
    actor: str | None = None
    target: str | None = None
    since: datetime | None = None
    after: int | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if self.action is not None:
            check_action_filter(self.action)
        if not 1 <= self.limit <= 10_000:
            raise InvalidInput("an audit listing takes 1..10000 entries at a time")
        for name, value, most in (("actor", self.actor, MAX_ACTOR + 16), ("target", self.target, MAX_TARGET)):
            if value is not None and (not 0 < len(value) <= most or any(c < " " or c == "\x7f" for c in value)):
                raise InvalidInput(f"the {name} filter is 1..{most} printable characters")
        if self.after is not None and self.after < 0:
            raise InvalidInput("after is a sequence number, 0 or more")
