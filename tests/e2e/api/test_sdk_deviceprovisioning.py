"""azure-iot-deviceprovisioning 1.0.0b1 (api-version 2021-10-01), unmodified, against the server.

It trusts our server CA through azure-core's `connection_verify` (a CA bundle path).
"""

from __future__ import annotations

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from iotdps.access import make_service_sas
from iotdps_testing.mgmt import ManagementServer
from iotdps_testing.soft_tpm import SoftTpm

from .conftest import Pki, seed_registrations

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _client(server: ManagementServer, policy: str = "provisioningserviceowner") -> DeviceProvisioningClient:
    return DeviceProvisioningClient.from_connection_string(
        server.connection_string(policy), connection_verify=str(server.ca_path), retry_total=0
    )


def test_enrollment_lifecycle_with_etags_and_keys(server: ManagementServer) -> None:
    client = _client(server)
    created = client.enrollment.create_or_update(
        id="sdk2-sym-1",
        enrollment={"registrationId": "sdk2-sym-1", "attestation": {"type": "symmetricKey"}, "deviceId": "d-1"},
    )
    assert created["etag"] and created["deviceId"] == "d-1"
    assert created["attestation"]["symmetricKey"].get("primaryKey") is None  # keys only via attestationmechanism
    keys = client.enrollment.get_attestation_mechanism(id="sdk2-sym-1")["symmetricKey"]
    assert len(keys["primaryKey"]) > 40 and keys["primaryKey"] != keys["secondaryKey"]

    fetched = client.enrollment.get(id="sdk2-sym-1")
    fetched["provisioningStatus"] = "disabled"
    updated = client.enrollment.create_or_update(id="sdk2-sym-1", enrollment=fetched, if_match=fetched["etag"])
    assert updated["provisioningStatus"] == "disabled" and updated["etag"] != fetched["etag"]
    # Writing back a record read without keys keeps the keys.
    assert client.enrollment.get_attestation_mechanism(id="sdk2-sym-1")["symmetricKey"] == keys

    with pytest.raises(HttpResponseError) as stale:
        client.enrollment.create_or_update(id="sdk2-sym-1", enrollment=fetched, if_match=fetched["etag"])
    assert stale.value.status_code == 412
    # A quoted etag is the same etag.
    client.enrollment.create_or_update(id="sdk2-sym-1", enrollment=updated, if_match=f'"{updated["etag"]}"')

    client.enrollment.delete(id="sdk2-sym-1")
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id="sdk2-sym-1")


def test_enrollment_query_pages_and_bulk(server: ManagementServer, pki: Pki) -> None:
    client = _client(server)
    ids = [f"sdk2-q-{i:02d}" for i in range(7)]
    result = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "create",
            "enrollments": [
                {
                    "registrationId": rid,
                    "attestation": {
                        "type": "x509",
                        "x509": {"clientCertificates": {"primary": {"certificate": pki.device_pem(rid)}}},
                    },
                }
                for rid in ids
            ],
        }
    )
    assert result == {"isSuccessful": True, "errors": []}
    before = server.trust_changes
    pages = list(client.enrollment.query(query_specification={"query": "SELECT *"}, top=3).by_page())
    items = [item for page in pages for item in page]
    assert [i["registrationId"] for i in items if i["registrationId"].startswith("sdk2-q-")] == ids
    assert len(pages) >= 3
    assert items[0]["attestation"]["x509"]["clientCertificates"]["primary"]["info"]["subjectName"] == "CN=sdk2-q-00"

    again = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "create",
            "enrollments": [
                {"registrationId": ids[0], "attestation": {"type": "tpm", "tpm": {"endorsementKey": SoftTpm(0).ek_b64}}}
            ],
        }
    )
    assert again["isSuccessful"] is False and again["errors"][0]["registrationId"] == ids[0]
    assert again["errors"][0]["errorCode"] == 409201

    deleted = client.enrollment.run_bulk_operation(
        bulk_operation={
            "mode": "delete",
            "enrollments": [{"registrationId": rid, "attestation": {"type": "x509"}} for rid in ids],
        }
    )
    assert deleted["isSuccessful"] is True
    assert server.trust_changes == before + len(ids)  # each X.509 enrollment was a TLS anchor


def test_groups_and_registration_states(server: ManagementServer, pki: Pki) -> None:
    client = _client(server)
    group = client.enrollment_group.create_or_update(
        id="sdk2-grp",
        enrollment_group={
            "enrollmentGroupId": "sdk2-grp",
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pki.ca_pem}}}},
            "allocationPolicy": "hashed",
            "initialTwin": {"tags": {"line": "a"}, "properties": {"desired": {"rate": 5}}},
        },
    )
    assert group["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"] == "CN=api-test-root"
    group["provisioningStatus"] = "disabled"
    changed = client.enrollment_group.create_or_update(id="sdk2-grp", enrollment_group=group, if_match=group["etag"])
    assert changed["provisioningStatus"] == "disabled"
    assert [
        g["enrollmentGroupId"] for g in client.enrollment_group.query(query_specification={"query": "SELECT *"})
    ] == ["sdk2-grp"]

    seed_registrations(server, "sdk2-grp", ["sdk2-dev-1", "sdk2-dev-2", "sdk2-dev-3"])
    state = client.device_registration_state.get(id="sdk2-dev-2")
    assert state["assignedHub"] == "hub-1.example.net" and state["status"] == "assigned"
    states = list(client.device_registration_state.query(id="sdk2-grp", top=2))
    assert [s["registrationId"] for s in states] == ["sdk2-dev-1", "sdk2-dev-2", "sdk2-dev-3"]
    client.device_registration_state.delete(id="sdk2-dev-2", if_match=state["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id="sdk2-dev-2")

    client.enrollment_group.delete(id="sdk2-grp", if_match=changed["etag"])
    assert list(client.enrollment_group.query(query_specification={"query": "SELECT *"})) == []


def test_credentials_forms_and_refusals(server: ManagementServer) -> None:
    owner = server.policies.get("provisioningserviceowner").primary_key.reveal()
    # The endpoint URL as `sr` (what this SDK signs when given a URL).
    by_url = DeviceProvisioningClient(
        server.base_url,
        AzureNamedKeyCredential("provisioningserviceowner", owner),
        connection_verify=str(server.ca_path),
    )
    assert list(by_url.enrollment_group.query(query_specification={"query": "SELECT *"})) == []
    # A ready-made token (AzureSasCredential), signed for the bare host name.
    token = make_service_sas("localhost", "provisioningserviceowner", owner)
    by_sas = DeviceProvisioningClient(server.base_url, AzureSasCredential(token), connection_verify=str(server.ca_path))
    assert list(by_sas.enrollment.query(query_specification={"query": "SELECT *"})) is not None

    read_only = _client(server, "enrollmentread")
    with pytest.raises(ClientAuthenticationError) as refused:
        read_only.enrollment.create_or_update(
            id="sdk2-ro", enrollment={"registrationId": "sdk2-ro", "attestation": {"type": "symmetricKey"}}
        )
    assert refused.value.status_code == 401
    assert "EnrollmentWrite" in refused.value.response.json()["message"]

    wrong = DeviceProvisioningClient(
        server.base_url,
        AzureNamedKeyCredential("provisioningserviceowner", "AAAA" + owner[4:]),
        connection_verify=str(server.ca_path),
    )
    with pytest.raises(ClientAuthenticationError) as bad_key:
        wrong.enrollment.get(id="anything")
    body = bad_key.value.response.json()
    assert set(body) >= {"errorCode", "trackingId", "message", "timestampUtc"} and body["errorCode"] == 401002
    assert bad_key.value.response.headers["x-ms-error-code"] == "Unauthorized"


def test_enrollment_get_carries_the_registration_state(server: ManagementServer) -> None:
    client = _client(server)
    client.enrollment.create_or_update(
        id="sdk2-state-1", enrollment={"registrationId": "sdk2-state-1", "attestation": {"type": "symmetricKey"}}
    )
    assert "registrationState" not in client.enrollment.get(id="sdk2-state-1")
    seed_registrations(server, None, ["sdk2-state-1"])
    fetched = client.enrollment.get(id="sdk2-state-1")
    state = fetched["registrationState"]
    assert state["registrationId"] == "sdk2-state-1" and state["status"] == "assigned"
    assert state["assignedHub"] == "hub-1.example.net" and state["deviceId"] == "sdk2-state-1"
    # A record read with its state can be written back (the state is read-only and ignored).
    fetched["provisioningStatus"] = "disabled"
    written = client.enrollment.create_or_update(id="sdk2-state-1", enrollment=fetched, if_match=fetched["etag"])
    assert written["provisioningStatus"] == "disabled"
    client.enrollment.delete(id="sdk2-state-1")
