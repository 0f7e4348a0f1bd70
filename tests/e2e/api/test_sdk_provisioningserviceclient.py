"""azure-iothub-provisioningserviceclient 1.2.0 (api-version 2018-09-01-preview), unmodified.

It signs `sr` = the connection string's HostName (`host:port` here) and talks through msrest,
so it trusts our server CA through `config.connection.verify` (or REQUESTS_CA_BUNDLE).
"""

from __future__ import annotations

import pytest
from provisioningserviceclient import ProvisioningServiceClient, ProvisioningServiceError, QuerySpecification
from provisioningserviceclient.models import (
    AttestationMechanism,
    BulkEnrollmentOperation,
    EnrollmentGroup,
    IndividualEnrollment,
    SymmetricKeyAttestation,
)

from iotdps_testing.mgmt import ManagementServer
from iotdps_testing.soft_tpm import SoftTpm

from .conftest import Pki, seed_registrations

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _client(server: ManagementServer, policy: str = "provisioningserviceowner") -> ProvisioningServiceClient:
    client = ProvisioningServiceClient.create_from_connection_string(server.connection_string(policy))
    client._runtime_client.config.connection.verify = str(server.ca_path)
    return client


def _status(error: ProvisioningServiceError) -> int:
    return int(error.cause.response.status_code)


def test_individual_enrollments(server: ManagementServer, pki: Pki) -> None:
    client = _client(server)
    tpm = AttestationMechanism.create_with_tpm(SoftTpm(0).ek_b64)
    created = client.create_or_update(IndividualEnrollment.create("sdk1-tpm", tpm, device_id="tpm-dev"))
    assert created.etag and created.device_id == "tpm-dev" and created.attestation.type == "tpm"

    x509 = AttestationMechanism.create_with_x509_client_certs(pki.device_pem("sdk1-x509"))
    trust_before = server.trust_changes
    made = client.create_or_update(IndividualEnrollment.create("sdk1-x509", x509))
    assert made.attestation.x509.client_certificates.primary.info.subject_name == "CN=sdk1-x509"
    assert server.trust_changes == trust_before + 1

    sym = AttestationMechanism(type="symmetricKey", symmetric_key=SymmetricKeyAttestation())
    client.create_or_update(IndividualEnrollment.create("sdk1-sym", sym))
    keys = client.get_individual_enrollment_attestation_mechanism("sdk1-sym").symmetric_key
    assert keys.primary_key and keys.secondary_key

    fetched = client.get_individual_enrollment("sdk1-tpm")
    fetched.provisioning_status = "disabled"
    updated = client.create_or_update(fetched)  # sends If-Match with the fetched etag
    assert updated.provisioning_status == "disabled" and updated.etag != fetched.etag
    with pytest.raises(ProvisioningServiceError) as stale:
        client.create_or_update(fetched)
    assert _status(stale.value) == 412

    query = client.create_individual_enrollment_query(QuerySpecification("SELECT *"), page_size=2)
    seen = [e.registration_id for page in query for e in page]
    assert seen == ["sdk1-sym", "sdk1-tpm", "sdk1-x509"]

    result = client.run_bulk_operation(
        BulkEnrollmentOperation("delete", [IndividualEnrollment.create(r, tpm) for r in ("sdk1-sym", "sdk1-x509")])
    )
    assert result.is_successful
    client.delete(updated)
    with pytest.raises(ProvisioningServiceError) as gone:
        client.get_individual_enrollment("sdk1-tpm")
    assert _status(gone.value) == 404


def test_groups_and_registration_states(server: ManagementServer, pki: Pki) -> None:
    client = _client(server)
    signing = AttestationMechanism.create_with_x509_signing_certs(pki.ca_pem)
    group = client.create_or_update(EnrollmentGroup.create("sdk1-grp", signing))
    assert group.attestation.x509.signing_certificates.primary.info.subject_name == "CN=api-test-root"
    group.provisioning_status = "disabled"
    changed = client.create_or_update(group)
    assert changed.provisioning_status == "disabled"
    groups = client.create_enrollment_group_query(QuerySpecification("SELECT *"))
    assert [g.enrollment_group_id for page in groups for g in page] == ["sdk1-grp"]

    seed_registrations(server, "sdk1-grp", ["sdk1-dev-a", "sdk1-dev-b"])
    state = client.get_registration_state("sdk1-dev-a")
    assert state.assigned_hub == "hub-1.example.net" and state.status == "assigned"
    # 1.2.0's `create_registration_state_query` passes page arguments the generated method does
    # not take (a TypeError in the SDK itself), so the group query goes through the generated
    # client, which sends the same request without paging headers.
    states = client._runtime_client.query_device_registration_states("sdk1-grp")
    assert [s.registration_id for s in states] == ["sdk1-dev-a", "sdk1-dev-b"]
    client.delete(state)
    client.delete_registration_state_by_param("sdk1-dev-b")
    with pytest.raises(ProvisioningServiceError) as gone:
        client.get_registration_state("sdk1-dev-a")
    assert _status(gone.value) == 404

    client.delete_enrollment_group_by_param("sdk1-grp", changed.etag)
    assert [g for page in client.create_enrollment_group_query(QuerySpecification("SELECT *")) for g in page] == []


def test_wrong_key_is_refused(server: ManagementServer) -> None:
    client = ProvisioningServiceClient(
        server.host_port, "provisioningserviceowner", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    )
    client._runtime_client.config.connection.verify = str(server.ca_path)
    with pytest.raises(ProvisioningServiceError) as refused:
        client.get_individual_enrollment("whatever")
    assert _status(refused.value) == 401


def test_enrollment_carries_its_registration_state(server: ManagementServer) -> None:
    client = _client(server)
    sym = AttestationMechanism(type="symmetricKey", symmetric_key=SymmetricKeyAttestation())
    client.create_or_update(IndividualEnrollment.create("sdk1-state", sym))
    assert client.get_individual_enrollment("sdk1-state").registration_state is None
    seed_registrations(server, None, ["sdk1-state"])
    fetched = client.get_individual_enrollment("sdk1-state")
    state = fetched.registration_state
    assert state.registration_id == "sdk1-state" and state.status == "assigned"
    assert state.assigned_hub == "hub-1.example.net"
    fetched.provisioning_status = "disabled"
    written = client.create_or_update(fetched)
    assert written.provisioning_status == "disabled" and written.registration_state.status == "assigned"
    client.delete(written)
