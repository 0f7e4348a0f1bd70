"""One contract, two clients: every test runs against `LocalAdminClient` (a real SQLite store)
and `RemoteAdminClient` (a real management API on loopback TLS), and both must answer alike."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.allocation.hubs import LinkedHub
from iotdps.cli.client import AdminClient, ExplainRequest, enroll_signing_group, prove_possession
from iotdps.cli.local import LocalAdminClient
from iotdps.cli.remote import RemoteAdminClient
from iotdps.cli.target import server_target
from iotdps.device.fleet import create_fleet
from iotdps.enrollment.models import EnrollmentGroup, IndividualEnrollment
from iotdps.errors import AlreadyExists, NotFound, PreconditionFailed
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key, issue_verification_certificate
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import open_store
from iotdps_testing.mgmt import ManagementServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mgmt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("admin-client")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["local", "remote"])
async def client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AdminClient]:
    if request.param == "local":
        store = await open_store(f"sqlite:///{tmp_path / 'iotdps.db'}")
        try:
            yield LocalAdminClient(store)
        finally:
            await store.close()
        return
    server: ManagementServer = request.getfixturevalue("mgmt")
    target = server_target({"connection_string": server.connection_string(), "server_ca": str(server.ca_path)})
    assert target is not None
    remote = RemoteAdminClient(target)
    try:
        yield remote
    finally:
        await remote.close()


def _root(name: str) -> tuple[Issuer, str]:
    key = generate_private_key()
    issuer = Issuer(create_root_ca(name, key, Validity.days(30)), key)
    return issuer, issuer.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def test_settings_and_hubs(client: AdminClient) -> None:
    saved = await client.put_settings(ServiceSettings("0ne0000C11", "hashed"))
    assert saved.id_scope == "0ne0000C11"
    assert (await client.get_settings()) == saved
    await client.put_hub(LinkedHub("hub-c.example.net", 1, True, None))
    updated = await client.update_hub("hub-c.example.net", lambda hub: replace(hub, allocation_weight=7))
    assert updated.allocation_weight == 7
    listed = {h.host_name: h for h in await client.list_hubs()}
    assert listed["hub-c.example.net"].allocation_weight == 7
    with pytest.raises(NotFound, match=r"^hub nowhere\.example\.net is not linked$"):
        await client.update_hub("nowhere.example.net", lambda hub: hub)
    with pytest.raises(NotFound, match=r"^hub nowhere\.example\.net is not linked$"):
        await client.remove_hub("nowhere.example.net")
    await client.remove_hub("hub-c.example.net")
    assert "hub-c.example.net" not in {h.host_name for h in await client.list_hubs()}


async def test_enrollment_round_trip_keeps_keys_and_checks_etags(client: AdminClient) -> None:
    rid = "client-sym-1"
    created = await client.put_enrollment(
        IndividualEnrollment.from_json({"registrationId": rid, "attestation": {"type": "symmetricKey"}})
    )
    got = await client.get_enrollment(rid)
    assert got is not None and got.etag == created.etag
    # Keys come back (the API's GET omits them; the client fetches them), so a write-back keeps them.
    assert got.attestation.symmetric_key is not None and created.attestation.symmetric_key is not None
    assert got.attestation.symmetric_key.primary_key.reveal() == created.attestation.symmetric_key.primary_key.reveal()
    disabled = await client.put_enrollment(got.with_status("disabled"), got.etag)
    assert disabled.settings.provisioning_status == "disabled"
    with pytest.raises(PreconditionFailed):
        await client.put_enrollment(got.with_status("enabled"), got.etag)  # stale etag
    assert rid in {e.registration_id for e in await client.list_enrollments()}
    await client.delete_enrollment(rid)
    assert await client.get_enrollment(rid) is None
    with pytest.raises(NotFound):
        await client.delete_enrollment(rid)


async def test_groups_and_signing_group_workflow(client: AdminClient) -> None:
    group = await client.put_group(
        EnrollmentGroup.from_json({"enrollmentGroupId": "client-grp", "attestation": {"type": "symmetricKey"}})
    )
    assert group.attestation.symmetric_key is not None
    assert "client-grp" in {g.enrollment_group_id for g in await client.list_groups()}
    _, pem = _root("client signing root")
    signed = await enroll_signing_group(client, "client-signing", pem)
    assert signed.attestation.x509 is not None
    assert signed.attestation.x509.signing_certificates[0] is not None
    assert signed.attestation.x509.signing_certificates[0].info["subjectName"] == "CN=client signing root"
    with pytest.raises(AlreadyExists, match="enrollment group client-signing already exists"):
        await enroll_signing_group(client, "client-signing", pem)
    for gid in ("client-grp", "client-signing"):
        await client.delete_group(gid)
        assert await client.get_group(gid) is None


async def test_proof_of_possession_and_ca_listing(client: AdminClient) -> None:
    issuer, pem = _root("client pop root")
    signed_codes: list[str] = []

    def sign(code: str) -> str:
        signed_codes.append(code)
        cert = issue_verification_certificate(issuer, code, generate_private_key().public_key(), Validity.days(1))
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    verified = await prove_possession(client, "client-root", pem, sign)
    assert verified.is_verified and len(signed_codes) == 1
    again = await prove_possession(client, "client-root", pem, sign)  # already verified: untouched
    assert again.is_verified and len(signed_codes) == 1
    assert (await client.get_ca("client-root")) is not None
    assert "client-root" in {c.name for c in await client.list_cas()}
    await client.delete_ca("client-root")
    assert await client.get_ca("client-root") is None


async def test_registrations_refusals_and_explain(client: AdminClient) -> None:
    await client.put_settings(ServiceSettings("0ne0000C12", "hashed"))
    assert await client.get_registration("never-registered") is None
    assert [r for r in await client.list_registrations() if r.registration_id == "never-registered"] == []
    assert [r for r in await client.list_refusals("never-registered", 10)] == []
    enrollment = await client.put_enrollment(
        IndividualEnrollment.from_json(
            {"registrationId": "explained-1", "attestation": {"type": "symmetricKey"}, "provisioningStatus": "disabled"}
        )
    )
    assert enrollment.attestation.symmetric_key is not None
    key = enrollment.attestation.symmetric_key.primary_key.reveal()
    lines = await client.explain(ExplainRequest("explained-1", symmetric_key=key))
    text = "\n".join(lines)
    assert lines[0] == "registration id: explained-1" and "disabled" in text
    await client.delete_enrollment("explained-1")


async def test_a_fleet_is_created_through_either_client(client: AdminClient, tmp_path: Path) -> None:
    # device.fleet takes the client as its FleetAdmin: it never imports the provisioning core.
    _, ca_pem = _root("fleet server ca")
    fleet = await create_fleet(client, "x509", 2, tmp_path / "fleet", ca_pem, workers=1)
    assert [d.registration_id for d in fleet.devices] == [f"{fleet.prefix}-000000", f"{fleet.prefix}-000001"]
    assert fleet.ca_name is not None
    ca = await client.get_ca(fleet.ca_name)
    assert ca is not None and ca.is_verified
    group = await client.get_group(fleet.group_id)
    assert group is not None and group.attestation.x509 is not None
    assert group.attestation.x509.ca_references[0] == fleet.ca_name


async def test_crl_upload_checks_the_crl_against_its_ca(client: AdminClient) -> None:
    import datetime as dt

    from iotdps.errors import InvalidInput
    from iotdps.pki.revocation import RevokedEntry, build_crl, crl_der, crl_pem

    issuer, pem = _root("crl-root")
    other, _ = _root("crl-root")  # the same name, another key
    name = f"crl-ca-{uuid.uuid4().hex[:8]}"
    await client.upload_ca(name, pem)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def crl(ca: Issuer, number: int, *, days: int = 7, start: dt.datetime = now) -> x509.CertificateRevocationList:
        entry = RevokedEntry(12345, start, "keyCompromise")
        return build_crl(ca, [entry], number=number, this_update=start, next_update=start + dt.timedelta(days=days))

    with pytest.raises(InvalidInput, match="not signed by the key of CN=crl-root"):
        await client.upload_crl(name, crl_pem(crl(other, 1)))
    expired = crl(issuer, 1, days=1, start=now - dt.timedelta(days=3))
    with pytest.raises(InvalidInput, match="expired at"):
        await client.upload_crl(name, crl_pem(expired))
    held = await client.upload_crl(name, base64.b64encode(crl_der(crl(issuer, 2))).decode())  # DER as base64
    assert held.crl_info is not None and held.crl_info["number"] == 2 and held.crl_info["revokedCount"] == 1
    with pytest.raises(InvalidInput, match="older than the one held"):
        await client.upload_crl(name, crl_pem(crl(issuer, 1)))
    listed = {ca.name: ca for ca in await client.list_cas()}
    assert listed[name].crl_info == held.crl_info
