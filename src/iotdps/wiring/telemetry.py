"""A node's telemetry beyond the SQL store: the routes fed after each committed batch
(server/telemetry_routes.py) and the SQL store's retention (hub/retention.py)."""

from __future__ import annotations

import logging
from typing import cast

from nats.aio.client import Client as Nats

from iotdps.config import Config
from iotdps.hub.retention import TelemetryRetention
from iotdps.ports import HubStore, Store, SystemClock
from iotdps.server.telemetry_routes import NatsRoute, Route, TelemetryRoutes, WebhookRoute
from iotdps.wiring.hub import Hubs

__all__ = ["Telemetry"]

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, config: Config, store: Store, hubs: Hubs, nats: Nats | None) -> None:
        self.config = config
        tc = config.telemetry
        routes: list[Route] = []
        self._nats_route: NatsRoute | None = None
        if "nats" in tc.routes and nats is not None:
            self._nats_route = NatsRoute(nats, config.cluster.subject_prefix, tc.nats_stream)
            routes.append(self._nats_route)
        if "webhook" in tc.routes:
            routes.append(WebhookRoute(tc.webhook_url, tc.webhook_ca_file))
        self.routes = TelemetryRoutes(routes, tc.route_buffer) if routes else None
        self._hubs = hubs
        self.retention = TelemetryRetention(
            cast(HubStore, store),
            hubs.names.all,
            SystemClock(),
            max_age=tc.retention_seconds,
            max_count=tc.retention_count,
            interval=tc.prune_interval_seconds,
        )

    async def start(self) -> None:
        if self._nats_route is not None:
            await self._nats_route.ensure_stream()
        if self.routes is not None:
            self.routes.start()
            self._hubs.writer.after_commit = self.routes.offer
        self.retention.start()

    async def stop(self) -> None:
        """After the hubs stopped (their last batches are offered by then)."""
        await self.retention.stop()
        if self.routes is not None:
            await self.routes.stop()
