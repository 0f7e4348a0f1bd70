"""The hubs of one node, assembled: the hub's domain (iotdps.hub) and its live connections
(iotdps.server.hub_live), started and stopped in the right order.

    names        HubNames: the host names served here
    writer       TelemetryWriter: group-committed telemetry
    requests     DeviceRequests: what a connected device's requests do to the records
    connections  HubConnections: CONNECT routing and the live connections (LiveDevices)
    cloud        CloudOperations: desired patches, methods, C2D, disconnects (API, control, CLI)
    credentials  (through connections) certificate renewal over the hub, once `use_issuers` ran
    expiry       C2DExpiry: the sweep of expired cloud-to-device messages

Shutdown order matters: stop admitting devices, store all queued telemetry (its PUBACKs still go
out), then close every connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from aiohttp import web

from iotdps.hub.c2d import C2DExpiry
from iotdps.hub.cloud import CloudOperations
from iotdps.hub.device_requests import DeviceRequests
from iotdps.hub.names import HubNames
from iotdps.hub.telemetry import TelemetryWriter
from iotdps.ports import Clock, HubStore, LiveDevices, Store, SystemClock
from iotdps.protocols.mqtt.packets import Connect
from iotdps.provisioning.hub_certificates import HubCertificates
from iotdps.provisioning.issuance import IssuerSource
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME
from iotdps.server.control import build_control_app
from iotdps.server.hub_credentials import CredentialRequests
from iotdps.server.hub_live import HubConnections
from iotdps.server.mqtt_conn import MqttConnection, MqttEndpoint

__all__ = ["Hubs"]


class Hubs:
    def __init__(
        self,
        store: Store,
        hub_host_names: Sequence[str],
        *,
        clock: Clock | None = None,
        c2d_expiry_interval: float = 30.0,
        telemetry_batch: int = 2000,
        token_max_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME,
    ) -> None:
        # Every store of ours implements the hub repositories too (iotdps.ports).
        hub_store = cast(HubStore, store)
        clock = clock or SystemClock()
        self.names = HubNames(hub_host_names)
        self.writer = TelemetryWriter(hub_store, max_batch=telemetry_batch)
        self.requests = DeviceRequests(hub_store, self.writer, clock=clock, token_max_lifetime=token_max_lifetime)
        self.connections = HubConnections(self.names, self.requests)
        self._store, self._hub_store, self._clock = store, hub_store, clock
        self.cloud = CloudOperations(hub_store, self.names, self.connections, clock)
        self.expiry = C2DExpiry(hub_store, clock, c2d_expiry_interval)

    def use_live(self, live: LiveDevices) -> None:
        """Cloud operations reach devices through `live` (a cluster's, which wraps
        `connections`) instead of this node's connections alone. Before anything uses `cloud`."""
        self.cloud = CloudOperations(self._hub_store, self.names, live, self._clock)

    def use_issuers(self, issuers: IssuerSource, *, per_minute: float = 1.0, burst: int = 5) -> None:
        """Open the credentials topic (certificate renewal over the hub, server.hub_credentials):
        devices' requests are issued by `issuers`, the node's issuing CAs; each device may make
        `burst` requests at once and `per_minute` after that."""
        certificates = HubCertificates(self._store, issuers, clock=self._clock)
        self.connections.credentials = CredentialRequests(
            certificates,
            self.connections.spawn,
            rate=per_minute / 60,
            burst=burst,
            renewed=lambda hub, device_id: self.cloud.recheck(hub, device_id),
        )

    async def route(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        """The shared listener's router for hub CONNECTs."""
        return await self.connections.route(conn, connect)

    async def start(self) -> None:
        self.connections.start()
        self.writer.start()
        self.expiry.start()

    async def stop(self) -> None:
        """Stop accepting devices, store all queued telemetry, then close every connection."""
        self.connections.stop_accepting()
        await self.expiry.stop()
        await self.writer.stop()
        await self.connections.close_all()

    def control_app(self, endpoints: Sequence[str] = ()) -> web.Application:
        """The local control endpoint (HTTP JSON on a unix socket) for the CLI."""
        return build_control_app(self.cloud, endpoints)
