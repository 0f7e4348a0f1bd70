"""A management client cannot forge a hub's serving lease or its implicit mark.

Both are the nodes' business (wiring/hub_leases.py): a lease set in the past would make
allocation skip a served hub, and `implicit` would make the next `iotdps up` unlink a hub the
operator linked. The linked hub API reads only allocationWeight, applyAllocationPolicy and
location; anything else in the body is ignored, and an operator's change to the implicit hub
makes it theirs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from iotdps.access import make_service_sas
from iotdps.allocation.hubs import LinkedHub
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("leases")).start()
    try:
        yield srv
    finally:
        srv.stop()


def _call(server: ManagementServer, method: str, path: str, body: Any = None) -> requests.Response:
    policy = "provisioningserviceowner"
    token = make_service_sas(server.host, policy, server.policies.get(policy).primary_key.reveal())
    return requests.request(
        method,
        server.base_url + path,
        json=body,
        headers={"Authorization": token},
        verify=str(server.ca_path),
        timeout=30,
    )


def _stored(server: ManagementServer, name: str) -> LinkedHub | None:
    async def read() -> LinkedHub | None:
        assert server.store is not None
        async with server.store.begin() as uow:
            return await uow.hubs.get(name)

    return server.call(read())


FORGED = {
    "allocationWeight": 2,
    "servedUntil": "2000-01-01T00:00:00Z",
    "servedBy": {"forged-node": "2100-01-01T00:00:00Z"},
    "implicit": True,
}


def test_a_new_hub_cannot_be_created_leased_out_or_implicit(server: ManagementServer) -> None:
    answer = _call(server, "PUT", "/linkedHubs/forged.example.net", FORGED)
    assert answer.status_code == 200, answer.text
    assert not {"servedUntil", "servedBy", "implicit"} & set(answer.json())
    stored = _stored(server, "forged.example.net")
    assert stored is not None and stored.allocation_weight == 2
    assert stored.served_until is None and stored.served_by == () and not stored.implicit


def test_an_update_keeps_the_nodes_lease_and_adopts_the_implicit_hub(server: ManagementServer) -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)

    async def seed() -> None:
        assert server.store is not None
        async with server.store.begin() as uow:
            await uow.hubs.put(
                LinkedHub("implicit.example.net", served_until=until, implicit=True, served_by=(("node-1", until),))
            )

    server.call(seed())
    for method in ("PUT", "PATCH"):
        answer = _call(server, method, "/linkedHubs/implicit.example.net", FORGED)
        assert answer.status_code == 200, answer.text
        stored = _stored(server, "implicit.example.net")
        assert stored is not None
        assert stored.served_until == until  # not the forged date in 2000
        assert stored.served_by == (("node-1", until),)  # nor a lease of a node that does not exist
        assert not stored.implicit  # changed by the operator: theirs, never unlinked by `up`
