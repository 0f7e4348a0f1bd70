"""Group-committed telemetry: enqueue each message, write batches in one transaction, then PUBACK.

Why: one transaction per message caps a SQLite hub at a few hundred messages per second, and
the PUBACK may only go out once the message is durable (the device drops its copy on PUBACK).
So `submit` only queues; one writer task takes whatever has queued up (at most `max_batch`),
writes it in one transaction and then acknowledges the whole batch. Under load the batches
grow by themselves; when idle a message is written at once. Sockets are written only after
the transaction has ended.

A failed batch is not acknowledged: the connections that sent it are closed, so their devices
resend after reconnecting (at least once, never silently lost). The queue is bounded;
`submit` waits when it is full, which back-pressures the sending connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from iotdps.errors import IotdpsError
from iotdps.registry.hub import HubStore, TelemetryMessage

__all__ = ["Acker", "TelemetryWriter"]

log = logging.getLogger(__name__)


class Acker(Protocol):
    """Who gets told when a message is durable (or could not be stored)."""

    def acknowledge(self, packet_id: int) -> None: ...
    def store_failed(self) -> None: ...


@dataclass(slots=True)
class _Item:
    message: TelemetryMessage
    acker: Acker | None
    packet_id: int | None


class TelemetryWriter:
    def __init__(
        self,
        store: HubStore,
        *,
        max_batch: int = 2000,
        max_queue: int = 50_000,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        self.written = 0
        self.batches = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-telemetry-writer")

    async def submit(self, message: TelemetryMessage, acker: Acker | None, packet_id: int | None) -> None:
        await self._queue.put(_Item(message, acker, packet_id))

    async def stop(self) -> None:
        """Write everything queued so far, then end the writer."""
        if self._task is None:
            return
        await self._queue.put(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._write(batch)

    async def _write(self, batch: list[_Item]) -> None:
        try:
            async with self._store.begin() as uow:
                await uow.telemetry.add_many([item.message for item in batch])
        except Exception as exc:  # any failure: nothing of the batch is acknowledged
            reason = exc.message if isinstance(exc, IotdpsError) else type(exc).__name__
            log.error("telemetry batch of %d not stored: %s", len(batch), reason)
            for item in batch:
                if item.acker is not None:
                    item.acker.store_failed()
            return
        self.written += len(batch)
        self.batches += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        # The transaction has ended: now the sockets.
        for item in batch:
            if item.acker is not None and item.packet_id is not None:
                item.acker.acknowledge(item.packet_id)
