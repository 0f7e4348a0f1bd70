"""The HTTPS webhook telemetry route end to end: a real `iotdps up` node, the unmodified
azure-iot-device SDK, and a real HTTPS receiver on loopback (aiohttp, TLS with a CA of the
test's own, given to the node as `webhook_ca_file`).

While the receiver is down the route buffers up to `route_buffer` messages, drops the oldest
beyond that, and says so on /metrics; the SDK's sends are still acknowledged (a PUBACK means
the SQL commit). Once the receiver is up it gets what was buffered and what follows, as JSON
arrays, in order, and /metrics shows the route up and empty.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from aiohttp import web
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotdps.ports import HubStore
from iotdps.store import open_store
from iotdps_testing.cluster import enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address, free_port
from iotdps_testing.server import RunningServer
from iotdps_testing.x509craft import make, write_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BUFFER = 3


class Receiver:
    """An HTTPS endpoint that records each POSTed JSON array, on a thread of its own."""

    def __init__(self, address: str, port: int, cert: Path, key: Path) -> None:
        self.address, self.port = address, port
        self.batches: list[list[dict[str, Any]]] = []
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [m for batch in list(self.batches) for m in batch]

    async def _ingest(self, request: web.Request) -> web.Response:
        self.batches.append(await request.json())
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/ingest", self._ingest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port, ssl_context=self._context).start()

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._thread is None:
            return
        runner = self._runner
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _receiver_tls(tmp: Path, address: str) -> tuple[Path, Path, Path]:
    ca = make("webhook-test-ca", None, ca=True)
    leaf = make(
        "webhook-receiver",
        ca,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        key_usage=None,
        extra=[(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)],
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    cert, key = leaf.write(tmp)
    return write_bundle(tmp / "webhook-ca.pem", [ca.cert]), cert, key


async def _stored(dsn: str, hub: str) -> list[str]:
    store = await open_store(dsn)
    try:
        async with cast(HubStore, store).begin() as uow:
            return [m.body.decode() for m in await uow.telemetry.list(hub, "hook-dev", limit=100)]
    finally:
        await store.close()


def _metric(node: RunningServer, name: str) -> float:
    token = (node.data_dir / "metrics-token").read_text().strip()
    page = requests.get(
        f"https://{node.address}:8443/metrics",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(node.server_ca_path),
        timeout=10,
    ).text
    for line in page.splitlines():
        if line.startswith(f'{name}{{route="webhook"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for the webhook route is not on /metrics")


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


def test_webhook_buffers_while_down_then_delivers_in_order(tmp_path: Path, dsn: str) -> None:
    hook_address = free_loopback_address(())
    hook_port = free_port(hook_address)
    ca_file, cert, key = _receiver_tls(tmp_path, hook_address)
    receiver = Receiver(hook_address, hook_port, cert, key)
    host = free_loopback_address()
    extra = (
        '[telemetry]\nroutes = ["sql", "webhook"]\n'
        f'webhook_url = "https://{hook_address}:{hook_port}/ingest"\n'
        f'webhook_ca_file = "{ca_file}"\nroute_buffer = {BUFFER}\n'
    )
    node = start_node(tmp_path, service_host=host, address=host, dsn=dsn, extra=extra)
    client = None
    try:
        device_key = asyncio.run(enroll_symmetric_key(dsn, "hook-dev"))
        result = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=host,
            registration_id="hook-dev",
            id_scope=node.id_scope,
            symmetric_key=device_key,
            server_verification_cert=node.server_ca,
        ).register()
        assert result.status == "assigned"
        client = IoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=device_key, hostname=host, device_id="hook-dev", server_verification_cert=node.server_ca
        )
        client.connect()

        # The receiver is down: every send is still acknowledged; the route holds the newest 3.
        for i in range(5):
            client.send_message(f"down {i}")
        _until(lambda: _metric(node, "iotdps_telemetry_route_down") == 1.0, "the route reads down")
        _until(lambda: _metric(node, "iotdps_telemetry_route_dropped") == 2.0, "two oldest dropped")
        assert _metric(node, "iotdps_telemetry_route_buffered") == BUFFER

        receiver.start()
        _until(lambda: len(receiver.messages) >= BUFFER, "the buffered messages delivered")
        for i in range(4):
            client.send_message(f"up {i}")
        _until(lambda: len(receiver.messages) >= BUFFER + 4, "the new messages delivered")
        bodies = [base64.b64decode(m["bodyBase64"]).decode() for m in receiver.messages]
        assert bodies == ["down 2", "down 3", "down 4", "up 0", "up 1", "up 2", "up 3"]
        first = receiver.messages[0]
        assert first["deviceId"] == "hook-dev" and first["hub"] == host
        assert first["systemProperties"]["connection_device_id"] == "hook-dev"
        assert all(isinstance(batch, list) and batch for batch in receiver.batches)
        _until(lambda: _metric(node, "iotdps_telemetry_route_down") == 0.0, "the route reads up")
        assert _metric(node, "iotdps_telemetry_route_buffered") == 0.0
        assert _metric(node, "iotdps_telemetry_route_dropped") == 2.0
        # What the route dropped is still in the SQL store, which every PUBACK stood for.
        stored = asyncio.run(_stored(dsn, host))
        assert stored == [f"down {i}" for i in range(5)] + [f"up {i}" for i in range(4)]
    finally:
        if client is not None:
            client.shutdown()
        node.stop()
        receiver.stop()
