"""TPM registration through the service: challenge, SAS answer, hub key blob, status lookups.

A software TPM (iotdps_testing.soft_tpm) opens the blobs, so each step of azure-wire-protocol.md
3.2 is checked here without swtpm; tests/e2e/tpm does the same against a real TPM.
"""

from __future__ import annotations

import base64
from dataclasses import replace

from certkit import NOW
from helpers import SCOPE, Env

from iotdps.enrollment.models import IndividualEnrollment
from iotdps.evidence import SasCredential, TpmEvidence
from iotdps.provisioning.registration import RegistrationOutcome, RegistrationRequest
from iotdps.provisioning.tpm_challenge import TpmChallenge, tpm_challenge
from iotdps.refusals import RefusalReason as R
from iotdps.secret import Secret
from iotdps_testing.soft_tpm import SoftTpm, tpm_enrollment_doc

EXPIRY = int(NOW.timestamp()) + 3600


def tpm_enrollment(rid: str, tpm: SoftTpm, **extra: object) -> IndividualEnrollment:
    return IndividualEnrollment.from_json(tpm_enrollment_doc(rid, tpm, **extra))


async def answered(env: Env, rid: str, tpm: SoftTpm, *, srk: bool = True) -> TpmEvidence:
    """Ask for the challenge, open it in the (software) TPM, sign the SAS."""
    evidence = TpmEvidence(tpm.ek_b64, tpm.srk_b64 if srk else None)
    got = await tpm_challenge(env.service, SCOPE, rid, evidence, peer="127.0.0.1")
    assert isinstance(got, TpmChallenge), got
    assert got.to_json()["keyName"] == "registration"
    tpm.activate(got.authentication_key)
    return replace(evidence, sas=Secret(tpm.sas(SCOPE, rid, expiry=EXPIRY)))


async def register(env: Env, rid: str, evidence: TpmEvidence) -> RegistrationOutcome:
    return await env.service.register(RegistrationRequest(SCOPE, rid, evidence, peer="127.0.0.1"))


async def test_challenge_answer_assigns_and_the_second_blob_carries_the_hub_key() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    outcome = await register(env, "tpm-1", await answered(env, "tpm-1", tpm))
    assert outcome.reason is None and outcome.record is not None
    state = outcome.operation_json()["registrationState"]
    assert state["status"] == "assigned" and state["deviceId"] == "tpm-1"
    blob = state["tpm"]["authenticationKey"]
    hub_key = SoftTpm(0).activate(blob)  # only this TPM opens it
    async with env.store.read() as uow:
        device = await uow.devices.get(state["assignedHub"], "tpm-1")
    assert device is not None and device.auth.type == "sas" and device.auth.primary_key is not None
    assert base64.b64decode(device.auth.primary_key.reveal()) == hub_key


async def test_status_lookups_take_the_same_sas() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    evidence = await answered(env, "tpm-1", tpm)
    outcome = await register(env, "tpm-1", evidence)
    assert outcome.operation_id is not None and evidence.sas is not None
    sas = SasCredential(evidence.sas)
    polled = await env.service.operation_status(SCOPE, "tpm-1", outcome.operation_id, sas)
    assert polled.reason is None and polled.record is not None and polled.record.tpm_authentication_key
    looked = await env.service.registration_status(SCOPE, "tpm-1", sas)
    assert looked.reason is None and looked.record == polled.record
    # A SAS alone does not register: the second blob needs the EK.
    refused = await env.service.register(RegistrationRequest(SCOPE, "tpm-1", sas))
    assert refused.reason is R.TPM_INVALID_KEY and "endorsement key" in refused.message


async def test_srk_from_the_enrollment_when_the_device_sends_none() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    outcome = await register(env, "tpm-1", await answered(env, "tpm-1", tpm, srk=False))
    assert outcome.status == "assigned"


async def test_another_tpm_claiming_the_registration_id_gets_no_challenge() -> None:
    env = await Env().setup()
    await env.enroll(tpm_enrollment("tpm-1", SoftTpm(0)))
    other = SoftTpm(1)
    got = await tpm_challenge(env.service, SCOPE, "tpm-1", TpmEvidence(other.ek_b64, other.srk_b64), peer="10.0.0.9")
    assert isinstance(got, RegistrationOutcome) and got.reason is R.TPM_EK_MISMATCH
    assert got.answer is not None and got.answer.http_status == 401
    logged = await env.refusals("tpm-1")
    assert logged[0].reason == "TPM_EK_MISMATCH" and "not the one enrolled" in logged[0].message


async def test_a_guessed_key_is_refused() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    await answered(env, "tpm-1", tpm)
    guessed = TpmEvidence(tpm.ek_b64, tpm.srk_b64, Secret(tpm.sas(SCOPE, "tpm-1", expiry=EXPIRY, key=bytes(32))))
    outcome = await register(env, "tpm-1", guessed)
    assert outcome.reason is R.SAS_BAD_SIGNATURE and "TPM challenge key" in outcome.message
    assert outcome.record is None


async def test_a_challenge_from_before_re_enrollment_no_longer_verifies() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    evidence = await answered(env, "tpm-1", tpm)
    async with env.store.begin() as uow:
        await uow.enrollments.delete("tpm-1")
    deleted = await register(env, "tpm-1", evidence)
    assert deleted.reason is R.NO_ENROLLMENT
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    replayed = await register(env, "tpm-1", evidence)
    assert replayed.reason is R.SAS_BAD_SIGNATURE
    # A fresh challenge for the new enrollment works.
    assert (await register(env, "tpm-1", await answered(env, "tpm-1", tpm))).status == "assigned"


async def test_disabled_enrollment_proves_the_tpm_then_ends_disabled() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm, provisioningStatus="disabled"))
    outcome = await register(env, "tpm-1", await answered(env, "tpm-1", tpm))
    assert outcome.reason is R.ENROLLMENT_DISABLED and outcome.status == "disabled"


async def test_webhook_context_and_reprovisioning_rotate_the_hub_key() -> None:
    env = await Env().setup()
    tpm = SoftTpm(0)
    await env.enroll(tpm_enrollment("tpm-1", tpm))
    first = await register(env, "tpm-1", await answered(env, "tpm-1", tpm))
    second = await register(env, "tpm-1", await answered(env, "tpm-1", tpm))
    assert first.record is not None and second.record is not None
    assert first.record.tpm_authentication_key != second.record.tpm_authentication_key
    key2 = SoftTpm(0).activate(second.record.tpm_authentication_key or "")
    async with env.store.read() as uow:
        device = await uow.devices.get(second.record.assigned_hub or "", "tpm-1")
    assert device is not None and device.auth.primary_key is not None
    assert base64.b64decode(device.auth.primary_key.reveal()) == key2
    auth = await env.service.authenticate(SCOPE, "tpm-1", await answered(env, "tpm-1", tpm))
    assert auth.webhook_context == {"tpm": {"endorsementKey": tpm.ek_b64, "storageRootKey": tpm.srk_b64}}
