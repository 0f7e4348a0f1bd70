"""Group-committed telemetry: enqueue each message, write batches in one transaction, then PUBACK.

Why: one transaction per message caps a SQLite hub at a few hundred messages per second, and
the PUBACK may only go out once the message is durable (the device drops its copy on PUBACK).
So `submit` only queues; one writer task takes whatever has queued up (at most `max_batch`),
writes it in one transaction and then acknowledges the whole batch. Under load the batches
grow by themselves; when idle a message is written at once. Sockets are written only after
the transaction has ended.

A failed batch is not acknowledged: the connections that sent it are closed, so their devices
resend after reconnecting (at least once, never silently lost). The queue is bounded;
`submit` waits when it is full, which back-pressures the sending connection only (`offer` is
the same without the wait, for the common case of room in the queue). Each connection gets
its share of a batch's PUBACKs in one call, so in one write and one TLS record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from iotdps import metrics
from iotdps.errors import IotdpsError
from iotdps.hub.records import TelemetryMessage
from iotdps.ports import HubStore

__all__ = ["Acker", "TelemetryWriter"]

log = logging.getLogger(__name__)


class Acker(Protocol):
    """Who gets told when a message is durable (or could not be stored)."""

    def acknowledge(self, packet_ids: Sequence[int]) -> None:
        """These messages are stored: PUBACK them, in this order."""
        ...

    def store_failed(self) -> None: ...


@dataclass(slots=True)
class _Item:
    message: TelemetryMessage
    acker: Acker | None
    packet_id: int | None


def _per_hub(batch: list[_Item]) -> dict[str, tuple[int, int]]:
    """(messages, body bytes) per hub of a stored batch: one metrics call per hub, not per message."""
    counts: dict[str, tuple[int, int]] = {}
    for item in batch:
        hub = item.message.hub
        messages, size = counts.get(hub, (0, 0))
        counts[hub] = (messages + 1, size + len(item.message.body))
    return counts


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
        self._max_queue = max_queue
        # A plain list, not an asyncio.Queue: the writer takes a whole batch with one slice,
        # and queueing a message is an append (asyncio.Queue's bookkeeping per put and per get
        # was a tenth of the hub's CPU per message).
        self._items: list[_Item] = []
        self._wakeup: asyncio.Future[None] | None = None  # the writer waits here for messages
        self._room: list[asyncio.Future[None]] = []  # submitters wait here while the queue is full
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        # Told every stored batch, in commit order, after its transaction and before its PUBACKs:
        # the telemetry routes beyond the SQL store (server/telemetry_routes.py).
        self.after_commit: Callable[[Sequence[TelemetryMessage]], None] | None = None
        self.written = 0
        self.batches = 0

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-telemetry-writer")

    async def submit(self, message: TelemetryMessage, acker: Acker | None, packet_id: int | None) -> None:
        """Queue the message, waiting while the queue is full."""
        while not self.offer(message, acker, packet_id):
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            try:
                await room
            finally:
                if room in self._room:  # cancelled before the writer made room
                    self._room.remove(room)

    def offer(self, message: TelemetryMessage, acker: Acker | None, packet_id: int | None) -> bool:
        """Queue the message if there is room (True); False when full: then `await submit`."""
        if len(self._items) >= self._max_queue:
            return False
        self._items.append(_Item(message, acker, packet_id))
        self._wake()
        return True

    async def stop(self) -> None:
        """Write everything queued so far, then end the writer."""
        if self._task is None:
            return
        self._stopping = True
        self._wake()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self._stopping:
                    return
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
                self._wakeup = None
                continue
            batch = self._items[: self._max_batch]
            del self._items[: self._max_batch]
            room, self._room = self._room, []
            for waiter in room:
                if not waiter.done():
                    waiter.set_result(None)
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
        metrics.telemetry(_per_hub(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        if self.after_commit is not None:
            self.after_commit([item.message for item in batch])
        # The transaction has ended: now the sockets, one call per connection for its share.
        shares: dict[Acker, list[int]] = {}
        for item in batch:
            if item.acker is not None and item.packet_id is not None:
                share = shares.get(item.acker)
                if share is None:
                    shares[item.acker] = [item.packet_id]
                else:
                    share.append(item.packet_id)
        for acker, packet_ids in shares.items():
            acker.acknowledge(packet_ids)
