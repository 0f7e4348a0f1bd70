"""Certificate issuance through the whole register pipeline (issue 18), on the memory store and
the real SQLite store: the answer per api-version, what is recorded, the hub identity, polls,
renewal, and the api-versions without a CSR field."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from certkit import NOW, FixedClock
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import KEY1, SCOPE, Env
from issuekit import IssuingWorld, issuing_world

from iotdps.evidence import SasCredential
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.provisioning.explain import explain_registration
from iotdps.refusals import RefusalReason
from iotdps.sas import derive_device_key, make_sas_token
from iotdps.secret import Secret
from iotdps.store import open_store
from iotdps_testing.issuance import csr_b64, make_csr, openssl_verify

P25, P21, SDK = "2025-07-01-preview", "2021-11-01-preview", "2019-03-31"
POLICY = {"certificateAuthorityName": "factory-ca", "validityInDays": 7}
DEVICE_KEY = derive_device_key(KEY1, "dev-1")


@pytest.fixture(params=["memory", "sqlite"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IssuingWorld]:
    store = None
    if request.param == "sqlite":
        store = await open_store(f"sqlite:///{tmp_path / 'iotdps.db'}", clock=FixedClock(NOW))
    built = await issuing_world(store=store)
    await built.local_ca()
    await built.bundle()
    try:
        yield built
    finally:
        await built.env.store.close()


def _chain(fields: dict[str, object]) -> list[x509.Certificate]:
    texts = fields["issuedCertificateChain"]
    assert isinstance(texts, list)
    return [x509.load_der_x509_certificate(base64.b64decode(t)) for t in texts]


async def test_sas_group_device_gets_a_chain_the_bundle_verifies(world: IssuingWorld, tmp_path: Path) -> None:
    await world.group(policy=POLICY, trust_bundle_id="fleet-roots")
    env: Env = world.env
    outcome = await env.register_sas("dev-1", DEVICE_KEY, csr=csr_b64(make_csr("dev-1")), api_version=P25)
    assert outcome.reason is None and outcome.status == "assigned", outcome.message
    state = outcome.operation_json()["registrationState"]
    chain = _chain(state)
    assert chain[0].subject.rfc4514_string() == "CN=dev-1" and chain[-1] == world.root.certificate
    bundle = TrustBundle.from_json({**state["trustBundle"], "version": 1})
    verdict = openssl_verify(tmp_path, chain, list(bundle.certificates))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    # Recorded: the certificate, the bundle version, the hub identity by thumbprint.
    record = outcome.record
    assert record is not None and record.trust_bundle_id == "fleet-roots" and record.trust_bundle_version == 1
    assert record.issued_certificate == sha256_thumbprint(chain[0])
    async with env.store.read() as uow:
        issued = await uow.issued_certificates.list(registration_id="DEV-1")
        device = await uow.devices.get(record.assigned_hub or "", "dev-1")
    assert [c.serial_number for c in issued] == [format(chain[0].serial_number, "X")]
    assert issued[0].issuer_name == "factory-ca" and issued[0].enrollment == "group:fleet"
    # The policy keeps nothing by default: the issued certificate is the only credential.
    assert device is not None and device.auth.type == "selfSigned" and device.auth.issued_only
    assert device.auth.primary_key is None and device.auth.own_thumbprints == ()
    assert device.auth.issued_thumbprints[0] == sha256_thumbprint(chain[0])
    # A poll answers the same fields; a poll in another api-version answers none.
    polled = await env.service.operation_status(SCOPE, "dev-1", outcome.operation_id or "", api_version=P25)
    assert polled.operation_json()["registrationState"]["issuedCertificateChain"] == state["issuedCertificateChain"]
    plain = await env.service.operation_status(SCOPE, "dev-1", outcome.operation_id or "", api_version=SDK)
    assert "issuedCertificateChain" not in plain.operation_json()["registrationState"]


async def test_2021_preview_answers_pem_and_bundle(world: IssuingWorld) -> None:
    await world.group(policy=POLICY, trust_bundle_id="fleet-roots")
    pem_csr = make_csr("dev-1").public_bytes(serialization.Encoding.PEM)
    outcome = await world.env.register_sas("dev-1", DEVICE_KEY, csr=pem_csr.decode(), api_version=P21)
    state = outcome.operation_json()["registrationState"]
    assert state["issuedClientCertificate"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert "issuedCertificateChain" not in state
    assert state["trustBundle"]["id"] == "fleet-roots"
    assert state["trustBundle"]["certificates"][0]["metadata"]["subjectName"] == "CN=Issuing Test Root"


async def test_renewal_gives_a_new_serial_and_the_hub_follows(world: IssuingWorld) -> None:
    await world.group(policy=POLICY)
    env = world.env
    first = await env.register_sas("dev-1", DEVICE_KEY, csr=csr_b64(make_csr("dev-1")), api_version=P25)
    second = await env.register_sas("dev-1", DEVICE_KEY, csr=csr_b64(make_csr("dev-1")), api_version=P25)
    a, b = _chain(first.operation_json()["registrationState"]), _chain(second.operation_json()["registrationState"])
    assert a[0].serial_number != b[0].serial_number
    async with env.store.read() as uow:
        issued = await uow.issued_certificates.list(registration_id="dev-1")
        device = await uow.devices.get(second.record.assigned_hub or "", "dev-1")  # type: ignore[union-attr]
    assert len(issued) == 2
    assert device is not None and device.auth.issued_thumbprints[0] == sha256_thumbprint(b[0])
    assert sha256_thumbprint(a[0]) not in device.auth.issued_thumbprints


async def test_versions_without_a_csr_field_behave_as_before(world: IssuingWorld) -> None:
    await world.group(gid="plain")
    plain = await world.env.register_sas("dev-1", DEVICE_KEY, api_version=SDK)
    assert plain.status == "assigned" and plain.extra_state == {}
    async with world.env.store.read() as uow:
        assert await uow.issued_certificates.list() == []
    record = plain.record
    assert record is not None and record.trust_bundle_id is None and record.issued_certificate is None


async def test_optional_policy_without_csr_assigns_and_required_refuses(world: IssuingWorld) -> None:
    await world.group(policy={**POLICY, "csrRequirement": "optional"})
    optional = await world.env.register_sas("dev-1", DEVICE_KEY, api_version=SDK)
    assert optional.status == "assigned"
    async with world.env.store.begin() as uow:
        await uow.groups.delete("fleet")
    await world.group(policy=POLICY)
    required = await world.env.register_sas("dev-1", DEVICE_KEY, api_version=SDK)
    assert required.reason is RefusalReason.CSR_REQUIRED and required.record is None
    async with world.env.store.read() as uow:
        record = await uow.registrations.get("dev-1")
    assert record is not None and record.status == "assigned"  # the refused request wrote nothing


async def test_explain_names_the_issuance_policy_and_bundle(world: IssuingWorld) -> None:
    await world.group(policy=POLICY, trust_bundle_id="fleet-roots")
    token = make_sas_token(SCOPE, "dev-1", DEVICE_KEY, int(NOW.timestamp()) + 600)
    lines = await explain_registration(world.env.service, "dev-1", SasCredential(Secret(token)))
    text = "\n".join(lines)
    assert "certificate issuance: local issuing CA 'factory-ca', 7 days, CSR required" in text
    assert "hub credential: the issued certificate only" in text  # keepExistingCredential is off
    assert "trust bundle: fleet-roots" in text
