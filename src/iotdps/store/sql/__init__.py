"""The SQL store: SQLAlchemy 2 Core over sqlite3 (the default) or asyncpg (several nodes).

One module a concern, so that each is found by name:
- engine: the two drivers (DSN, engine, pragmas, pool), driver errors, SQLite's busy waits;
- store: SqlStore, which opens and ends units of work; unit: the unit of work;
- tx: a unit's statement runner; keyed: the operations every keyed table shares;
- cache: the read cache (config-version cache) of settings, hubs, CAs and group lookups;
- enrollments, registrations, configuration (CAs, linked hubs, settings), hub (devices,
  telemetry, cloud-to-device messages, sessions), refusals, statistics: one per aggregate;
- fastpath: the only module that reaches under SQLAlchemy (raw compilation, private hooks).
"""

from __future__ import annotations

from iotdps.store.sql.engine import RAW_TRANSACTIONS, SQLITE_BUSY_SLICE_MS, describe_error, sqlite_begin
from iotdps.store.sql.store import DEFAULT_PRUNE_EVERY, SqlStore

__all__ = [
    "DEFAULT_PRUNE_EVERY",
    "RAW_TRANSACTIONS",
    "SQLITE_BUSY_SLICE_MS",
    "SqlStore",
    "describe_error",
    "sqlite_begin",
]
