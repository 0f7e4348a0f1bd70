"""GET /audit on a real `iotdps up`: who the entries name (a token's policy, a console
session's policy, the server's startup), and every malformed filter a client can send is a 400
that says what is wrong (never a traceback). Its right (ServiceConfig) is in the REQUIRED table
of test_management_api."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iotdps.access import make_service_sas
from iotdps_testing.console import MGMT_PORT, ConsoleClient, policy_key
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

OWNER = "provisioningserviceowner"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory.mktemp("audit-attack"))
    try:
        yield srv
    finally:
        srv.stop()


def _as(server: RunningServer, policy: str, method: str, path: str, body: Any = None) -> Any:
    client = ConsoleClient(server)
    token = make_service_sas(f"{server.address}:{MGMT_PORT}", policy, policy_key(server, policy))
    return client.request(method, path, body, headers={"Authorization": token})


def test_entries_name_the_policy_the_console_session_and_the_startup(server: RunningServer) -> None:
    body = {"registrationId": "audit-dev-1", "attestation": {"type": "symmetricKey"}}
    assert _as(server, "enrollmentwrite", "PUT", "/enrollments/audit-dev-1", body).status == 200
    console = ConsoleClient(server)
    console.sign_in("enrollmentwrite")
    body2 = {"registrationId": "audit-dev-2", "attestation": {"type": "symmetricKey"}}
    assert console.request("PUT", "/enrollments/audit-dev-2", body2).status == 200
    assert _as(server, OWNER, "PUT", "/linkedHubs/audit-hub.example", {"allocationWeight": 3}).status == 200

    answer = _as(server, OWNER, "GET", "/audit?limit=1000")
    assert answer.status == 200
    who = {(e["actor"], e["action"], e["target"]) for e in answer.json()}
    assert ("policy:enrollmentwrite", "enrollment.create", "enrollment/audit-dev-1") in who
    assert ("console:enrollmentwrite", "enrollment.create", "enrollment/audit-dev-2") in who
    assert ("policy:provisioningserviceowner", "hub.link", "hub/audit-hub.example") in who
    assert any(actor == "system:startup-config" for actor, _, _ in who)  # the first ID scope, the hub
    # Filters over the API.
    only = _as(server, OWNER, "GET", "/audit?action=enrollment&actor=console:enrollmentwrite").json()
    assert [e["target"] for e in only] == ["enrollment/audit-dev-2"]
    # No key ever reaches the log.
    keys = _as(server, "enrollmentwrite", "POST", "/enrollments/audit-dev-1/attestationmechanism").json()
    assert keys["symmetricKey"]["primaryKey"] not in answer.body.decode()


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", "limit must be 1..1000"),
        ("limit=1001", "limit must be 1..1000"),
        ("limit=ten", "limit must be a whole number"),
        ("limit=-1", "limit must be a whole number"),
        ("after=%C2%B9", "after must be a whole number"),
        ("after=99999999999999999999", "after must be a whole number"),
        ("since=yesterday", "is not an ISO-8601 time"),
        ("action=enroll%25", "is not an action name"),
        ("action=ENROLLMENT.create", "is not an action name"),
        ("actor=" + "a" * 300, "the actor filter is"),
        ("target=" + "t" * 400, "the target filter is"),
        ("order=desc", "unknown query parameter 'order'"),
    ],
)
def test_malformed_filters_are_a_clear_400(server: RunningServer, query: str, words: str) -> None:
    answer = _as(server, OWNER, "GET", f"/audit?{query}")
    assert answer.status == 400, answer.body
    assert words in answer.body.decode()
    assert "Traceback" not in answer.body.decode()
