"""The read cache: what every registration reads and an operator rarely changes (service
settings, linked hubs, CA certificates, enrollment group lookups), kept between units of work.

Answers are filled under one "version" of the configuration tables and trusted only by a unit
that sees that same version:
- SQLite: the version is PRAGMA data_version, read under the write lock (or at the start of a
  read snapshot); it moves when another connection (another process) commits, and our own
  writes drop the cache.
- PostgreSQL: the version is the config_version row, which every writer of a cached table
  bumps, on any node. Transactions run concurrently here, so one that sees an older version
  than the cache's reads through, and a newer version starts a new cache. A transaction that
  reads the version before another commits and the rows after may cache the newer rows under
  the older version: stale only in the safe direction, and dropped as soon as a transaction
  sees the new version.
"""

from __future__ import annotations

from typing import Any

from iotdps.store import tables as t

__all__ = ["CACHED_TABLES", "ReadCache"]

# The tables whose rows (and answers derived from them) the cache may hold; a unit of work that
# writes one of them bumps config_version and reads through from then on (SqlTx.wrote).
CACHED_TABLES = frozenset(
    table.name
    for table in (t.service_settings, t.linked_hubs, t.ca_certificates, t.enrollment_groups, t.individual_enrollments)
)


class ReadCache:
    def __init__(self, *, concurrent: bool) -> None:
        self._concurrent = concurrent  # PostgreSQL: units may see versions out of order
        self._answers: dict[tuple[Any, ...], Any] = {}
        self._version: int | None = None

    def for_version(self, version: int | None) -> dict[tuple[Any, ...], Any] | None:
        """The answers a unit that sees `version` may use and fill, or None to read through
        (None for `version` too: no version row, someone emptied the table, nothing to trust)."""
        if version is None:
            return None
        if version == self._version:
            return self._answers
        if self._concurrent and self._version is not None and version < self._version:
            return None
        self._answers = {}
        self._version = version
        return self._answers

    def drop(self) -> None:
        """Forget every answer: this process wrote a cached table."""
        self._answers = {}
        self._version = None
