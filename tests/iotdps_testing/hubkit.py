"""A real hub on loopback for tests: TLS on <addr>:8883 (and websockets on :443), the Hubs,
and helpers to create device identities and certificates.

The Azure SDK's ports are fixed, so every server takes its own 127.x.y.z address and a server
certificate with that IP SAN; the hub's host name is the address itself.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from iotdps.hub.devices import DeviceAuth, DeviceIdentity, Twin
from iotdps.pki import certs, create_server_identity
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.ports import Store
from iotdps.protocols.mqtt.hub import classify_username
from iotdps.protocols.mqtt.packets import Connect
from iotdps.secret import Secret
from iotdps.server.listen import TlsAppServer, serve_aiohttp_app, start_tls_server
from iotdps.server.mqtt_conn import MqttConnection, MqttEndpoint
from iotdps.server.tls import ServerTls
from iotdps.server.ws_bridge import WEBSOCKET_PATH, serve_mqtt_websocket
from iotdps.wiring.hub import Hubs
from iotdps_testing.devcerts import DeviceCert
from iotdps_testing.net import free_loopback_address

__all__ = ["HubServer", "put_sas_device", "put_x509_device", "start_hub", "wait_for"]

MAX_PACKET = 300 * 1024
T = TypeVar("T")


@dataclass
class HubServer:
    address: str
    hubs: Hubs
    store: Store
    tls: ServerTls
    ca_pem: str
    servers: list[asyncio.Server] = field(default_factory=list)
    sites: list[TlsAppServer] = field(default_factory=list)
    connects: int = 0

    @property
    def host(self) -> str:
        return self.address

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        await self.hubs.stop()
        for site in self.sites:
            await site.close()
        for server in self.servers:
            await server.wait_closed()


async def start_hub(
    store: Store,
    *,
    websockets: bool = False,
    extra_hosts: tuple[str, ...] = (),
    dps_router: Callable[[MqttConnection, Connect], Any] | None = None,
) -> HubServer:
    address = free_loopback_address()
    identity = create_server_identity(dns_names=("localhost",), ip_addresses=[address])
    tls = ServerTls([identity.certificate, identity.ca_certificate], identity.key)  # type: ignore[arg-type]
    hubs = Hubs(store, [address, *extra_hosts], c2d_expiry_interval=0.5)
    await hubs.start()
    ca_pem = identity.ca_certificate.public_bytes(serialization.Encoding.PEM).decode()
    hub = HubServer(address, hubs, store, tls, ca_pem)

    async def router(conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        kind = classify_username(connect.username or "")
        if kind == "hub":
            hub.connects += 1
            return await hubs.route(conn, connect)
        if kind == "dps" and dps_router is not None:
            result: MqttEndpoint | int = await dps_router(conn, connect)
            return result
        return 5

    def factory() -> MqttConnection:
        return MqttConnection(router, max_packet_size=MAX_PACKET)

    hub.servers.append(await start_tls_server(address, 8883, tls, factory))
    if websockets:
        app = web.Application()

        async def ws(request: web.Request) -> web.StreamResponse:
            return await serve_mqtt_websocket(request, factory)

        app.router.add_get(WEBSOCKET_PATH, ws)
        hub.sites.append(await serve_aiohttp_app(app, address, 443, tls))
    return hub


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def put_sas_device(store: Store, hub: str, device_id: str, *, status: str = "enabled") -> str:
    key = new_key()
    device = DeviceIdentity(hub, device_id, DeviceAuth("sas", Secret(key), Secret(new_key())), status=status)  # type: ignore[arg-type]
    async with store.begin() as uow:
        await uow.devices.put(device)
    return key


async def put_x509_device(store: Store, hub: str, device: DeviceCert, *, sha1: bool = False) -> None:
    tp = sha1_thumbprint(device.cert) if sha1 else sha256_thumbprint(device.cert)
    cn = certs.common_name(device.cert) or ""
    async with store.begin() as uow:
        await uow.devices.put(DeviceIdentity(hub, cn, DeviceAuth("selfSigned", primary_thumbprints=(tp,)), twin=Twin()))


async def wait_for(q: queue.Queue[T], timeout: float = 10.0) -> T:
    """The next item a (thread-side) SDK handler put into `q`."""
    return await asyncio.to_thread(q.get, True, timeout)
