"""MemoryStore: opens transactions over the committed state (tx.py) one at a time, and swaps
in what a transaction changed when its block ends without an exception."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from iotdps.errors import StoreError
from iotdps.ports import Clock, SystemClock
from iotdps.store._common import DEFAULT_REFUSAL_LIMIT
from iotdps.store.memory.refusals import kept_refusals
from iotdps.store.memory.tx import Committed, MemoryTx
from iotdps.store.memory.unit import MemoryUnitOfWork

__all__ = ["MemoryStore"]


class MemoryStore:
    """`Store` held in process memory; gone when the process ends."""

    def __init__(self, *, clock: Clock | None = None, refusal_limit: int = DEFAULT_REFUSAL_LIMIT) -> None:
        if refusal_limit < 1:
            raise ValueError("refusal_limit must be at least 1")
        self.clock: Clock = clock or SystemClock()
        self.refusal_limit = refusal_limit
        self._state = Committed(self.clock, refusal_limit)
        self._lock = asyncio.Lock()
        self._closed = False

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[MemoryTx]:
        if self._closed:
            raise StoreError("the store is closed")
        async with self._lock:
            tx = MemoryTx(self._state)
            try:
                yield tx
            finally:
                tx.open = False

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[MemoryUnitOfWork]:
        async with self._open() as tx:
            yield MemoryUnitOfWork(tx)
            # Reached only when the block ended without an exception: commit.
            state = self._state
            state.tables.update(tx.changed)
            state.seq = tx.seq
            state.telemetry.extend(tx.new_telemetry)
            if tx.c2d is not None:
                state.c2d = tx.c2d
            if tx.sessions is not None:
                state.hub_sessions = tx.sessions
            if tx.audit is not None:
                state.audit = tx.audit
            if tx.new_refusals:
                state.refusals, state.refusal_serial = kept_refusals(state, tx.new_refusals)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[MemoryUnitOfWork]:
        """A unit of work that only reads: one that wrote raises StoreError, and its writes are
        dropped (the SQL store refuses the write itself)."""
        async with self._open() as tx:
            yield MemoryUnitOfWork(tx)
            if tx.wrote():
                raise StoreError("a read-only unit of work cannot write")

    async def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"MemoryStore({sum(len(t) for t in self._state.tables.values())} records)"
