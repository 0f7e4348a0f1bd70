"""A management API server on loopback TLS, running in its own thread and event loop.

The official service SDKs are synchronous (requests), so the server cannot share the test's
event loop; `ManagementServer` runs one loop in a daemon thread, and `call()` runs a coroutine
there (to seed registration records, read the store...). Stopped by `stop()`, bounded waits.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from iotdps.access import AccessPolicies
from iotdps.api import build_management_app
from iotdps.issuance.sealing import SealingKey
from iotdps.pki import create_server_identity
from iotdps.ports import Store
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import open_store
from iotdps.wiring.hub import Hubs
from iotdps_testing.net import free_port

__all__ = ["ID_SCOPE", "ManagementServer"]

T = TypeVar("T")
ID_SCOPE = "0ne00000A1B"
_WAIT = 30.0


class ManagementServer:
    def __init__(self, workdir: Path, *, dsn: str = "memory://", max_body: int = 1 << 20) -> None:
        self.workdir = workdir
        self.dsn = dsn
        self.max_body = max_body
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.trust_changes = 0
        identity = create_server_identity(("localhost",), (self.host,))
        self.ca_path = workdir / "server-ca.pem"
        self.ca_path.write_bytes(identity.ca_certificate.public_bytes(serialization.Encoding.PEM))
        cert_path, key_path = workdir / "server.pem", workdir / "server.key"
        cert_path.write_bytes(identity.certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            identity.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert_path, key_path)
        self.policies = AccessPolicies.load_or_create(workdir / "data")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mgmt-api", daemon=True)
        self._runner: web.AppRunner | None = None
        self.hub: Hubs | None = None
        self.store: Store | None = None
        self.service: ProvisioningService | None = None
        self.sealing = SealingKey.generate()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def connection_string(self, policy: str = "provisioningserviceowner") -> str:
        return self.policies.connection_string(policy, self.host_port)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(_WAIT)

    async def _trust_changed(self) -> None:
        self.trust_changes += 1

    async def _start(self) -> None:
        self.store = await open_store(self.dsn)
        self.service = ProvisioningService(self.store, default_settings=ServiceSettings(ID_SCOPE))
        # One hub named by this server's address, so the hub service API answers here too.
        self.hub = Hubs(self.store, [self.host])
        await self.hub.start()
        app = build_management_app(
            self.store,
            self.service,
            self.policies,
            host_names=("localhost", self.host),
            max_body=self.max_body,
            on_trust_changed=self._trust_changed,
            hub=self.hub.cloud,
            hub_hosts=(self.host,),
            sealing=self.sealing,
        )
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.hub is not None:
            await self.hub.stop()
        if self.store is not None:
            await self.store.close()

    def start(self) -> ManagementServer:
        self._thread.start()
        self.call(self._start())
        return self

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_WAIT)
