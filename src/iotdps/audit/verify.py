"""Checking a log: every entry's hash, every link, every recorded prune.

What each finding means (one `Problem` per finding, in log order):
- changed: an entry's fields no longer hash to its stored hash; or an entry after it no
  longer links to it and nothing else explains the break (its hash was rewritten too);
- deleted: the sequence numbers jump and the link across the gap is broken; or the oldest
  entries are gone and no `audit.pruned` entry (itself in the chain) records their removal;
- reordered: an entry links to an entry that is elsewhere in the log (rows swapped or moved).

A chain cannot show that its newest entries were cut off: nothing follows them. `verify` reports
the head (newest seq and hash) so an operator can note it and later check it is still there
(`--head`), or copy exports elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from iotdps.audit.actions import PRUNED
from iotdps.audit.chain import GENESIS, AuditEntry, entry_hash

__all__ = ["Problem", "Summary", "verify_chain"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # "changed" | "deleted" | "reordered"
    seq: int
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class Summary:
    entries: int
    head_seq: int | None
    head_hash: str | None
    problems: tuple[Problem, ...]
    hashes: frozenset[str]  # every stored hash, for checking a remembered head


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    prev: str
    hash: str
    intact: bool


def _anchor(entry: AuditEntry) -> tuple[int, str] | None:
    """(last pruned seq, its hash) of an intact prune entry."""
    try:
        detail = json.loads(entry.detail)
        return int(detail["throughSeq"]), str(detail["throughHash"])
    except (ValueError, KeyError, TypeError):
        return None


def verify_chain(entries: Iterable[AuditEntry]) -> Summary:
    """Check `entries` (ascending seq, as the store lists them). Keeps only a small tuple per
    entry, so a long log is checked in one pass over its pages."""
    rows: list[_Row] = []
    anchors: set[tuple[int, str]] = set()
    for entry in entries:
        intact = entry_hash(entry) == entry.hash
        rows.append(_Row(entry.seq, entry.prev, entry.hash, intact))
        if intact and entry.action == PRUNED:
            found = _anchor(entry)
            if found is not None:
                anchors.add(found)
    problems: list[Problem] = []
    where = {row.hash: index for index, row in enumerate(rows)}
    for index, row in enumerate(rows):
        if not row.intact:
            problems.append(
                Problem("changed", row.seq, f"entry {row.seq} was changed: its fields do not hash to its hash")
            )
        if index == 0:
            if row.prev != GENESIS and (row.seq - 1, row.prev) not in anchors:
                problems.append(
                    Problem(
                        "deleted",
                        row.seq,
                        f"the entries before {row.seq} were deleted: no audit.pruned entry records their removal",
                    )
                )
            continue
        before = rows[index - 1]
        if row.prev == before.hash:
            continue
        linked = where.get(row.prev)
        if linked is not None:
            problems.append(
                Problem(
                    "reordered",
                    row.seq,
                    f"entry {row.seq} is out of order: in the chain it follows {rows[linked].seq}, not {before.seq}",
                )
            )
        elif row.seq > before.seq + 1:
            missing = f"{before.seq + 1}" if row.seq == before.seq + 2 else f"{before.seq + 1}..{row.seq - 1}"
            problems.append(Problem("deleted", before.seq + 1, f"entry {missing} was deleted (the chain breaks there)"))
        elif before.intact:
            problems.append(
                Problem(
                    "changed",
                    before.seq,
                    f"entry {before.seq} was replaced, or one after it deleted: entry {row.seq} does not link to it",
                )
            )
    head = rows[-1] if rows else None
    return Summary(
        len(rows),
        head.seq if head else None,
        head.hash if head else None,
        tuple(problems),
        frozenset(where),
    )
