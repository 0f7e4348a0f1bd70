"""The issuance policy's `keepExistingCredential` through the register pipeline (issue 18), on
the memory store and the real SQLite store: what the hub identity holds after an issuing
registration with the option off (the issued certificate alone), on (the attestation
credential too: a symmetric-key device's derived keys, an X.509 device's own thumbprints), and
after the option is turned off again (the old credential is gone at the next registration).
Renewal replaces the issued thumbprints and never the kept credential. The registration view
shows the issued certificate and the trust bundle the device received."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from certkit import NOW, FixedClock, issue
from cryptography import x509
from helpers import KEY1, KEY2, Env, x509_enrollment
from issuekit import IssuingWorld, issuing_world

from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.pki.csr_policy import IssuancePolicy
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.pki.issuing.base import IssuedChain
from iotdps.provisioning.issuance import hub_auth
from iotdps.provisioning.record_view import IssuedSummary, registration_view
from iotdps.provisioning.registration import RegistrationOutcome
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps.store import open_store
from iotdps.timestamps import format_time
from iotdps_testing.issuance import csr_b64, make_csr

P25 = "2025-07-01-preview"
POLICY: dict[str, Any] = {"certificateAuthorityName": "factory-ca", "validityInDays": 7}
KEPT = {**POLICY, "keepExistingCredential": True}
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


def _leaf(outcome: RegistrationOutcome) -> x509.Certificate:
    assert outcome.status == "assigned", outcome.message
    first = outcome.operation_json()["registrationState"]["issuedCertificateChain"][0]
    return x509.load_der_x509_certificate(base64.b64decode(first))


async def _device(env: Env, outcome: RegistrationOutcome) -> DeviceIdentity:
    record = outcome.record
    assert record is not None and record.assigned_hub and record.device_id
    async with env.store.read() as uow:
        device = await uow.devices.get(record.assigned_hub, record.device_id)
    assert device is not None
    return device


async def _issue_sas(world: IssuingWorld) -> tuple[x509.Certificate, DeviceAuth]:
    outcome = await world.env.register_sas("dev-1", DEVICE_KEY, csr=csr_b64(make_csr("dev-1")), api_version=P25)
    return _leaf(outcome), (await _device(world.env, outcome)).auth


async def test_off_by_default_the_issued_certificate_alone(world: IssuingWorld) -> None:
    await world.group(policy=POLICY)
    leaf, auth = await _issue_sas(world)
    assert auth.type == "selfSigned" and auth.issued_only
    assert auth.primary_key is None and auth.secondary_key is None and auth.own_thumbprints == ()
    assert auth.issued_thumbprints == (sha256_thumbprint(leaf), sha1_thumbprint(leaf))


async def test_on_a_symmetric_key_device_keeps_its_keys_and_renewal_keeps_them(world: IssuingWorld) -> None:
    await world.group(policy=KEPT)
    first, auth = await _issue_sas(world)
    assert auth.type == "sas" and not auth.issued_only
    assert auth.primary_key is not None and auth.primary_key.reveal() == DEVICE_KEY
    assert auth.secondary_key is not None and auth.secondary_key.reveal() == derive_device_key(KEY2, "dev-1")
    assert auth.issued_thumbprints[0] == sha256_thumbprint(first)
    # Renewal (a new CSR): the new certificate replaces the old one, the keys stay.
    second, renewed = await _issue_sas(world)
    assert renewed.issued_thumbprints == (sha256_thumbprint(second), sha1_thumbprint(second))
    assert (renewed.type, renewed.primary_key, renewed.secondary_key) == ("sas", auth.primary_key, auth.secondary_key)


async def test_turning_it_off_removes_the_old_credential_at_the_next_registration(world: IssuingWorld) -> None:
    await world.group(policy=KEPT)
    _, kept = await _issue_sas(world)
    assert kept.primary_key is not None
    async with world.env.store.begin() as uow:
        await uow.groups.delete("fleet")
    await world.group(policy=POLICY)
    leaf, auth = await _issue_sas(world)
    assert auth.issued_only and auth.primary_key is None and auth.secondary_key is None
    assert auth.issued_thumbprints[0] == sha256_thumbprint(leaf)


async def test_an_x509_device_keeps_its_own_thumbprints_only_when_kept(world: IssuingWorld) -> None:
    own = issue("x-dev-1")
    env = world.env
    await env.enroll(x509_enrollment("x-dev-1", own, issuance_policy=IssuancePolicy.from_json(KEPT)))
    kept = await env.register_x509("x-dev-1", [own.cert], csr=csr_b64(make_csr("x-dev-1")), api_version=P25)
    auth = (await _device(env, kept)).auth
    assert auth.type == "selfSigned" and auth.primary_thumbprints[0] == own.sha256
    assert auth.issued_thumbprints[0] == sha256_thumbprint(_leaf(kept))
    await env.enroll(x509_enrollment("x-dev-1", own, issuance_policy=IssuancePolicy.from_json(POLICY)))
    dropped = await env.register_x509("x-dev-1", [own.cert], csr=csr_b64(make_csr("x-dev-1")), api_version=P25)
    auth = (await _device(env, dropped)).auth
    assert auth.own_thumbprints == () and auth.issued_thumbprints[0] == sha256_thumbprint(_leaf(dropped))


async def test_the_registration_view_shows_the_certificate_and_the_bundle(world: IssuingWorld) -> None:
    await world.group(policy=POLICY, trust_bundle_id="fleet-roots")
    outcome = await world.env.register_sas("dev-1", DEVICE_KEY, csr=csr_b64(make_csr("dev-1")), api_version=P25)
    leaf = _leaf(outcome)
    assert outcome.record is not None
    async with world.env.store.read() as uow:
        view = await registration_view(uow, outcome.record)
    doc = view.to_json()
    assert doc["trustBundleId"] == "fleet-roots" and doc["trustBundleVersion"] == 1
    assert doc["issuedCertificate"] == {
        "sha256Thumbprint": sha256_thumbprint(leaf),
        "serialNumber": format(leaf.serial_number, "X"),
        "notAfterUtc": format_time(leaf.not_valid_after_utc),
        "certificateAuthorityName": "factory-ca",
    }
    assert IssuedSummary.from_json(doc["issuedCertificate"]) == view.issued
    # The device's own answer stays the Azure shape: none of the operator's fields.
    state = outcome.operation_json()["registrationState"]
    assert "issuedCertificate" not in state and "trustBundleId" not in state


def test_hub_auth_keeps_a_tpm_devices_hub_key_only_when_kept() -> None:
    """A TPM device's hub identity is a SAS key the service made for it (attestation.tpm); the
    policy keeps it like any other credential. (The whole flow, a TPM device registering with a
    CSR on swtpm, is tests/e2e/tpm/test_device_tpm_csr.py.)"""
    root = issue("root", ca=True)
    leaf = issue("tpm-dev-1", root)
    chain = IssuedChain(leaf.cert, (), root.cert, "factory-ca")
    hub_key = DeviceAuth("sas", Secret(KEY1), Secret(KEY2))
    kept = hub_auth(chain, hub_key, keep=True)
    assert (kept.type, kept.primary_key, kept.secondary_key) == ("sas", hub_key.primary_key, hub_key.secondary_key)
    assert kept.issued_thumbprints == (leaf.sha256, sha1_thumbprint(leaf.cert))
    assert hub_auth(chain, hub_key, keep=False) == DeviceAuth("selfSigned", issued_thumbprints=kept.issued_thumbprints)
