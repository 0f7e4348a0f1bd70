"""The in-memory store: the reference behaviour of the `Store` port, and the fake for tests.

A transaction works on the committed state copy-on-write (a table is copied the first time the
transaction writes it) and swaps its tables in on commit; an exception discards them, so
nothing of a failed block is ever visible. One asyncio.Lock serialises transactions, which is
how SQLite's single writer behaves: two concurrent registrations of one id run one after the
other. Do not open a transaction inside another in the same task: it would wait forever.

Records are kept as JSON text built by `iotdps.store._records`, exactly what the SQL store
writes, so a value the database could not hold fails here too, and no caller can mutate a
stored record through an object it was handed.

Modules as in store/sql: store (MemoryStore), unit, tx (committed state, one transaction's
view, the keyed-table operations), and one per aggregate.
"""

from __future__ import annotations

from iotdps.store.memory.store import MemoryStore

__all__ = ["MemoryStore"]
