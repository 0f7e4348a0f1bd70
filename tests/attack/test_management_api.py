"""The management API as an attacker holding one credential (or none) sees it.

Every route of the route table (the one that also generates `/openapi.json`) is tried with every
shared access policy, with no Authorization header and with a forged signature; the rights each
route needs are written down HERE, independently of the route table, so a route whose required
right drifts (or a new route nobody classified) fails this module. A refused request is a 401 or
403; an admitted one is anything else but a 500 (404 and 400 are fine: the handler ran).

Real parts: the management app over loopback TLS (iotdps_testing.mgmt) on a SQLite file.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from iotdps.api.auth import DEFAULT_POLICIES, Permission, make_service_sas
from iotdps.api.routes import ROUTES, Route
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.e2e

_ER, _EW = Permission.ENROLLMENT_READ, Permission.ENROLLMENT_WRITE
_RR, _RW = Permission.REGISTRATION_READ, Permission.REGISTRATION_WRITE
_SC = Permission.SERVICE_CONFIG
_GR, _GW, _SV = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, Permission.SERVICE_CONNECT

# The right each operation needs. Reading an attestation mechanism returns symmetric keys (an
# enrollment group's master key lets its holder register any id): it needs EnrollmentWrite, so
# the read-only policy reads no secret.
REQUIRED: dict[str, Permission] = {
    "IndividualEnrollment_Get": _ER,
    "IndividualEnrollment_CreateOrUpdate": _EW,
    "IndividualEnrollment_Delete": _EW,
    "IndividualEnrollment_GetAttestationMechanism": _EW,
    "IndividualEnrollment_Query": _ER,
    "IndividualEnrollment_RunBulkOperation": _EW,
    "EnrollmentGroup_Get": _ER,
    "EnrollmentGroup_CreateOrUpdate": _EW,
    "EnrollmentGroup_Delete": _EW,
    "EnrollmentGroup_GetAttestationMechanism": _EW,
    "EnrollmentGroup_Query": _ER,
    "EnrollmentGroup_RunBulkOperation": _EW,
    "DeviceRegistrationState_QueryAll": _RR,
    "DeviceRegistrationState_Get": _RR,
    "DeviceRegistrationState_Delete": _RW,
    "DeviceRegistrationState_Query": _RR,
    "Certificates_List": _SC,
    "Certificates_Get": _SC,
    "Certificates_CreateOrUpdate": _SC,
    "Certificates_Delete": _SC,
    "Certificates_GenerateVerificationCode": _SC,
    "Certificates_VerifyCertificate": _SC,
    "LinkedHubs_List": _SC,
    "LinkedHubs_Get": _SC,
    "LinkedHubs_CreateOrUpdate": _SC,
    "LinkedHubs_Update": _SC,
    "LinkedHubs_Delete": _SC,
    "Settings_Get": _SC,
    "Settings_Set": _SC,
    "Refusals_List": _RR,
    "Explain": _ER,
    "Devices_GetDevices": _GR,
    "Devices_GetIdentity": _GR,
    "Devices_CreateOrUpdateIdentity": _GW,
    "Devices_DeleteIdentity": _GW,
    "Devices_GetTwin": _GR,
    "Devices_UpdateTwin": _SV,
    "Devices_ReplaceTwin": _SV,
    "Devices_InvokeMethod": _SV,
    "CloudToDevice_Send": _SV,
    "Telemetry_Read": _SV,
}

# Who asks: each default policy by name, nobody, and a token signed with a key nobody holds.
NO_AUTH = "<no Authorization>"
FORGED = "<forged signature>"
CALLERS = (*sorted(DEFAULT_POLICIES), NO_AUTH, FORGED)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    work = tmp_path_factory.mktemp("mgmt-attack")
    srv = ManagementServer(work, dsn=f"sqlite:///{work / 'iotdps.db'}").start()
    try:
        yield srv
    finally:
        srv.stop()


def _authorization(server: ManagementServer, caller: str) -> dict[str, str]:
    if caller == NO_AUTH:
        return {}
    if caller == FORGED:
        foreign = base64.b64encode(secrets.token_bytes(32)).decode()
        return {"Authorization": make_service_sas(server.host_port, "provisioningserviceowner", foreign)}
    key = server.policies.get(caller).primary_key.reveal()
    return {"Authorization": make_service_sas(server.host_port, caller, key)}


def _request(server: ManagementServer, route: Route, caller: str) -> requests.Response:
    path = route.path.replace("{id}", "attack-dev-1").replace("{name}", "attack-name")
    body: Any = {} if route.body is not None else None
    return requests.request(
        route.method,
        server.base_url + path + "?api-version=2021-10-01",
        headers={**_authorization(server, caller), "Content-Type": "application/json"},
        data=json.dumps(body) if body is not None else None,
        verify=str(server.ca_path),
        timeout=30,
    )


def test_every_route_is_classified() -> None:
    """A route nobody wrote down here is a route nobody decided the rights of."""
    assert {r.operation_id for r in ROUTES} == set(REQUIRED)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.operation_id)
def test_route_against_every_policy(server: ManagementServer, route: Route) -> None:
    needed = REQUIRED[route.operation_id]
    wrong: list[str] = []
    for caller in CALLERS:
        allowed = caller in DEFAULT_POLICIES and needed in DEFAULT_POLICIES[caller]
        answer = _request(server, route, caller)
        refused = answer.status_code in (401, 403)
        if answer.status_code >= 500:
            wrong.append(f"{caller}: {answer.status_code} {answer.text[:200]}")
        elif refused == allowed:
            verdict, expected = ("refused", "admitted") if refused else ("admitted", "refused")
            wrong.append(f"{caller}: {verdict} ({answer.status_code}) but should be {expected}")
    assert not wrong, f"{route.method} {route.path} needs {needed.value}:\n" + "\n".join(wrong)


def test_openapi_documents_the_same_rights(server: ManagementServer) -> None:
    doc = requests.get(server.base_url + "/openapi.json", verify=str(server.ca_path), timeout=30).json()
    documented = {op["operationId"]: op.get("x-permission") for ops in doc["paths"].values() for op in ops.values()}
    assert documented == {name: right.value for name, right in REQUIRED.items()}


def test_read_only_policy_reads_no_key(server: ManagementServer) -> None:
    """With `enrollmentread`, nothing it may read carries a symmetric key."""
    owner = _authorization(server, "provisioningserviceowner")
    reader = _authorization(server, "enrollmentread")
    base, verify = server.base_url, str(server.ca_path)
    for path, doc in (
        ("/enrollments/ro-key-1", {"registrationId": "ro-key-1", "attestation": {"type": "symmetricKey"}}),
        ("/enrollmentGroups/ro-grp-1", {"enrollmentGroupId": "ro-grp-1", "attestation": {"type": "symmetricKey"}}),
    ):
        assert requests.put(base + path, json=doc, headers=owner, verify=verify, timeout=30).status_code == 200
        keys = requests.post(base + path + "/attestationmechanism", headers=owner, verify=verify, timeout=30).json()
        secrets_ = (keys["symmetricKey"]["primaryKey"], keys["symmetricKey"]["secondaryKey"])
        answers = [
            requests.get(base + path, headers=reader, verify=verify, timeout=30),
            requests.post(base + path.rsplit("/", 1)[0] + "/query", headers=reader, verify=verify, timeout=30),
        ]
        for answer in answers:
            assert answer.status_code == 200
            assert not any(s in answer.text for s in secrets_)
        refused = requests.post(base + path + "/attestationmechanism", headers=reader, verify=verify, timeout=30)
        assert refused.status_code == 401
        assert not any(s in refused.text for s in secrets_)
