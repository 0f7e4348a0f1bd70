"""One node of two stops cleanly: the hub they both serve stays allocatable through the other.

Both nodes serve the implicit hub (no [[hubs]] configured, one DPS host name). Each holds its
own serving lease on it (wiring/hub_leases.py); a clean stop (SIGTERM) ends only the stopping
node's, so a registration through the remaining node is assigned at once, not refused with
"No IoT hub available" until that node's next renewal. When the last node stops, the hub is
unserved at once.

Real parts: two `iotdps up` nodes on one PostgreSQL database of the test's own, HTTPS
registration with a symmetric-key SAS against the surviving node's own address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from iotdps.allocation.hubs import LinkedHub
from iotdps.store import open_store
from iotdps.timestamps import utcnow
from iotdps_testing.cluster import enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer
from iotdps_testing.tpm_http import DpsHttp

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(180)]


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


def _sas(key_b64: str, id_scope: str, registration_id: str) -> str:
    sr = quote(f"{id_scope}/registrations/{registration_id}", safe="")
    se = int(time.time()) + 3600
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    sig = base64.b64encode(digest).decode("ascii")
    return f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}&skn=registration"


def _register(dps: DpsHttp, registration_id: str, key: str) -> dict[str, object]:
    """One registration, its operation polled briefly (it runs in the background); the final
    registration state."""
    sas = _sas(key, dps.server.id_scope, registration_id)
    reply = dps.register(registration_id, {"registrationId": registration_id}, sas)
    assert reply.status in (200, 202), reply
    deadline = time.monotonic() + 15
    while reply.body.get("status") == "assigning" and time.monotonic() < deadline:
        time.sleep(0.1)
        reply = dps.operation(registration_id, reply.body["operationId"], sas)
    state = reply.body.get("registrationState")
    assert isinstance(state, dict), reply
    return state


def _owner_key(node: RunningServer) -> str:
    doc = json.loads((node.data_dir / "access-policies.json").read_text())
    return str(next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == "provisioningserviceowner"))


def _hub(dsn: str, name: str) -> LinkedHub:
    async def read() -> LinkedHub | None:
        store = await open_store(dsn)
        try:
            async with store.begin() as uow:
                return await uow.hubs.get(name)
        finally:
            await store.close()

    hub = asyncio.run(read())
    assert hub is not None, f"hub {name} is not linked"
    return hub


def test_a_clean_stop_of_one_node_leaves_the_hub_served_by_the_other(tmp_path: Path, dsn: str) -> None:
    service = free_loopback_address()
    first = start_node(tmp_path, service_host=service, dsn=dsn)
    try:
        second = start_node(tmp_path, service_host=service, dsn=dsn)
        try:
            assert first.id_scope == second.id_scope
            both = _hub(dsn, service)
            keys = {name: asyncio.run(enroll_symmetric_key(dsn, name)) for name in ("lease-a", "lease-b")}
            dps = DpsHttp(second)
            assert _register(dps, "lease-a", keys["lease-a"])["status"] == "assigned"

            assert first.stop() == 0
            # No renewal of the second node's lease has to come first: the hub is still served.
            state = _register(dps, "lease-b", keys["lease-b"])
            assert state["status"] == "assigned", state
            assert state["assignedHub"] == service
            # Each node held its own lease; the stop ended the first node's only.
            assert len(both.served_by) == 2 and not both.unserved(utcnow())
            left = _hub(dsn, service)
            assert not left.unserved(utcnow()), left
            (survivor,) = [node for node, _ in left.served_by]
            assert survivor in {node for node, _ in both.served_by}
            # `hub list` says which node serves it, from the database and through the API.
            listed = second.cli("hub", "list", "--dsn", dsn)
            assert f"yes (by {survivor}; lease until" in listed, listed
            remote = second.cli_json(
                "hub", "list", "--json", "--server", f"https://{second.address}:8443",
                "--policy", "provisioningserviceowner", "--key", _owner_key(second),
                "--server-ca", str(second.server_ca_path),
            )  # fmt: skip
            assert [set(h.get("servedBy", {})) for h in remote] == [{survivor}], remote
        finally:
            assert second.stop() == 0
        # The last node serving the hub stopped: unserved at once, as before.
        assert _hub(dsn, service).unserved(utcnow())
    finally:
        first.stop()
