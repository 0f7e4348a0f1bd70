"""Telemetry retention: the background pruning of a hub's stored telemetry by age and count.

Why in small batches: the telemetry writer commits batches of incoming messages while this
runs; one big DELETE would hold the SQLite write lock (or a long PostgreSQL transaction) and
stall ingestion. So each prune is one short transaction of at most `batch` rows, with a yield
to the event loop in between, until a hub has nothing left to prune. Several nodes of a
cluster share one database and each runs this for every hub: each batch first claims the hub
(`claim_pruning`, a PostgreSQL advisory lock), and a node that finds it taken leaves that hub
to the other node until its next round, so the nodes never delete the same rows at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from iotdps.errors import IotdpsError
from iotdps.ports import Clock, HubStore

__all__ = ["TelemetryRetention"]

log = logging.getLogger(__name__)


class TelemetryRetention:
    def __init__(
        self,
        store: HubStore,
        hubs: Sequence[str],
        clock: Clock,
        *,
        max_age: float = 0.0,
        max_count: int = 0,
        interval: float = 60.0,
        batch: int = 2000,
    ) -> None:
        self._store = store
        self._hubs = tuple(hubs)
        self._clock = clock
        self._max_age = max_age
        self._max_count = max_count
        self._interval = interval
        self._batch = batch
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pruned = 0
        self.skipped = 0  # hubs left to another node's pruning, so far

    @property
    def enabled(self) -> bool:
        return self._max_age > 0 or self._max_count > 0

    def start(self) -> None:
        self._stop_event.clear()
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-telemetry-retention")

    async def stop(self) -> None:
        # Told to stop, never cancelled mid-transaction (as C2DExpiry).
        self._stop_event.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def prune_once(self) -> int:
        """Prune every hub until nothing is left to prune; the number of messages deleted."""
        total = 0
        before = self._clock.now() - timedelta(seconds=self._max_age) if self._max_age > 0 else None
        keep = self._max_count if self._max_count > 0 else None
        for hub in self._hubs:
            while not self._stop_event.is_set():
                async with self._store.begin() as uow:
                    if not await uow.telemetry.claim_pruning(hub):
                        self.skipped += 1  # another node prunes this hub right now
                        break
                    gone = await uow.telemetry.prune(hub, before=before, keep=keep, limit=self._batch)
                total += gone
                if gone < self._batch:
                    break
                await asyncio.sleep(0)  # let the writer's next batch in
        self.pruned += total
        return total

    async def _run(self) -> None:
        while not self._stop_event.is_set():
            try:
                gone = await self.prune_once()
                if gone:
                    log.info("telemetry retention pruned %d messages", gone)
            except IotdpsError as exc:
                log.warning("telemetry retention failed: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), self._interval)
