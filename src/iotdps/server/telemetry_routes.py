"""Telemetry routes beyond the SQL store: a NATS subject per hub and device (a JetStream stream
when configured) and an HTTPS webhook, like IoT Hub's message routing.

What a PUBACK means (README, "Telemetry routes"): the SQL store is the route the device's
PUBACK waits for: a PUBACKed message is committed to the database. The other routes are fed
from committed batches, in commit order, by one sender task per route:
- a route that is up gets every message at least once (a sender that fails mid-batch resends
  the batch from where it failed; JetStream's publish waits for the stream's acknowledgement,
  so a message the stream acknowledged is stored there);
- a route that is down holds up to `route_buffer` messages and retries with backoff; beyond
  that it drops the oldest, counts them (`dropped`) and says so in the log (bounded memory: one
  dead consumer must not take the node down). A dropped message is still in the SQL store.

NATS subjects: `<prefix>.telemetry.<hub>.<device>`; a token that NATS would misread (`.`, `*`,
`>`, spaces) is percent-escaped, so a subscriber to `<prefix>.telemetry.<hub>.>` sees every
device of the hub, in order per device. Headers carry the enqueued time and the properties.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
from nats.aio.client import Client as Nats

from iotdps import metrics
from iotdps.hub.records import TelemetryMessage

__all__ = ["NatsRoute", "Route", "TelemetryRoutes", "WebhookRoute", "subject_token"]

log = logging.getLogger(__name__)

_SEND_BATCH = 500
_BACKOFF_MAX = 5.0


def subject_token(value: str) -> str:
    """`value` as one NATS subject token: percent-escape what NATS reads as structure."""
    out = []
    for ch in value:
        if ch in ".*>% \t\r\n" or ord(ch) < 0x20:
            out.append("%" + format(ord(ch), "02X"))
        else:
            out.append(ch)
    return "".join(out) or "%00"


class Route(Protocol):
    name: str

    async def send(self, messages: Sequence[TelemetryMessage]) -> None:
        """Deliver, in order; raise when the route is down (the caller keeps them)."""
        ...

    async def close(self) -> None: ...


def message_doc(m: TelemetryMessage) -> dict[str, Any]:
    return {
        "hub": m.hub,
        "deviceId": m.device_id,
        "enqueuedTime": m.enqueued.isoformat(),
        "systemProperties": dict(m.system_properties),
        "properties": dict(m.application_properties),
        "bodyBase64": base64.b64encode(m.body).decode("ascii"),
    }


class NatsRoute:
    name = "nats"

    def __init__(self, nats: Nats, prefix: str, stream: str = "") -> None:
        self._nats = nats
        self._prefix = prefix
        self._stream = stream
        self._js = nats.jetstream() if stream else None

    async def ensure_stream(self) -> None:
        """Create the JetStream stream on this prefix's telemetry subjects, if it is missing."""
        if self._js is None:
            return
        try:
            await self._js.stream_info(self._stream)
        except Exception:  # nats-py's NotFoundError, or the first call on a fresh server
            await self._js.add_stream(name=self._stream, subjects=[f"{self._prefix}.telemetry.>"])

    def subject(self, m: TelemetryMessage) -> str:
        return f"{self._prefix}.telemetry.{subject_token(m.hub)}.{subject_token(m.device_id)}"

    async def send(self, messages: Sequence[TelemetryMessage]) -> None:
        for m in messages:
            headers = {
                "Iotdps-Enqueued": m.enqueued.isoformat(),
                "Iotdps-Properties": json.dumps(
                    {"system": dict(m.system_properties), "application": dict(m.application_properties)}
                ),
            }
            if self._js is not None:
                await self._js.publish(self.subject(m), m.body, headers=headers)
            else:
                await self._nats.publish(self.subject(m), m.body, headers=headers)
        if self._js is None:
            await self._nats.flush()

    async def close(self) -> None:
        return None


class WebhookRoute:
    name = "webhook"

    def __init__(self, url: str, ca_file: str = "", timeout: float = 10.0) -> None:
        self._url = url
        context = ssl.create_default_context(cafile=ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl = context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, messages: Sequence[TelemetryMessage]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = [message_doc(m) for m in messages]
        async with self._session.post(self._url, json=body, ssl=self._ssl) as answer:
            if answer.status // 100 != 2:
                raise OSError(f"webhook answered {answer.status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Feed:
    """One route's bounded buffer and its sender task."""

    def __init__(self, route: Route, limit: int) -> None:
        self.route = route
        self.limit = limit
        self.buffer: collections.deque[TelemetryMessage] = collections.deque()
        self.dropped = 0
        self.sent = 0
        self.down = False
        self._wakeup = asyncio.Event()
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def offer(self, messages: Sequence[TelemetryMessage]) -> None:
        self.buffer.extend(messages)
        over = len(self.buffer) - self.limit
        if over > 0:
            for _ in range(over):
                self.buffer.popleft()
            if self.dropped == 0 or (self.dropped // 10_000) != ((self.dropped + over) // 10_000):
                log.warning(
                    "telemetry route %s is behind: its buffer of %d is full, %d oldest messages dropped so far "
                    "(they are still in the SQL store)",
                    self.route.name,
                    self.limit,
                    self.dropped + over,
                )
            self.dropped += over
        self._wakeup.set()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            if not self.buffer:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self.buffer[i] for i in range(min(_SEND_BATCH, len(self.buffer)))]
            try:
                await self.route.send(batch)
            except Exception as exc:
                if not self.down:
                    log.warning("telemetry route %s is down: %s; buffering", self.route.name, type(exc).__name__)
                self.down = True
                if self._stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_stop(), backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if self.down:
                log.info("telemetry route %s is up again", self.route.name)
            self.down, backoff = False, 0.1
            # The batch was the buffer's head, less what overflowed meanwhile (dropped from it).
            sent_ids = {id(m) for m in batch}
            while self.buffer and id(self.buffer[0]) in sent_ids:
                self.buffer.popleft()
            self.sent += len(batch)

    async def _wait_stop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()


class TelemetryRoutes:
    """The routes a node feeds after each committed batch (TelemetryWriter.after_commit)."""

    def __init__(self, routes: Sequence[Route], buffer: int) -> None:
        self._feeds = [_Feed(route, buffer) for route in routes]
        metrics.track_routes(self, TelemetryRoutes.status)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for feed in self._feeds:
            feed.task = loop.create_task(feed.run(), name=f"telemetry-route-{feed.route.name}")

    def offer(self, messages: Sequence[TelemetryMessage]) -> None:
        for feed in self._feeds:
            feed.offer(messages)

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            f.route.name: {"buffered": len(f.buffer), "dropped": f.dropped, "sent": f.sent, "down": f.down}
            for f in self._feeds
        }

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is buffered (within `grace` seconds), then close the routes."""
        for feed in self._feeds:
            feed.stop()
        tasks = [f.task for f in self._feeds if f.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for feed in self._feeds:
            if feed.buffer:
                log.warning("telemetry route %s: %d messages not sent at shutdown", feed.route.name, len(feed.buffer))
            await feed.route.close()
