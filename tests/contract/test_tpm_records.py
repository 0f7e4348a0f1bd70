"""TPM records in every store: the enrollment's challenge key and the registration's second blob.

The challenge key lives beside the enrollment's API document (store._records) and must survive
a round trip through each backend unchanged, and be new when the enrollment is written again
from the API shape; the blob of `registrationState.tpm` must come back with the record.
"""

from __future__ import annotations

from iotdps.enrollment.models import IndividualEnrollment
from iotdps.ports import Store
from iotdps.provisioning.records import RegistrationRecord
from iotdps_testing.soft_tpm import SoftTpm, tpm_enrollment_doc


async def test_challenge_key_round_trips_and_never_reaches_the_api_shape(store: Store) -> None:
    made = IndividualEnrollment.from_json(tpm_enrollment_doc("tpm-1", SoftTpm(0)))
    async with store.begin() as uow:
        await uow.enrollments.put(made)
    async with store.read() as uow:
        got = await uow.enrollments.get("TPM-1")
    assert got is not None and got.attestation.tpm is not None and made.attestation.tpm is not None
    assert got.attestation.tpm.challenge_key.reveal() == made.attestation.tpm.challenge_key.reveal()
    secret = made.attestation.tpm.challenge_key.reveal()
    assert secret not in repr(got.to_json(include_keys=True)) and secret not in repr(got)
    # Written again from its API document (what an update or re-enrollment does): a new key.
    again = IndividualEnrollment.from_json(got.to_json(include_keys=True))
    assert again.attestation.tpm is not None and again.attestation.tpm.challenge_key.reveal() != secret


async def test_registration_keeps_the_second_blob(store: Store) -> None:
    record = RegistrationRecord("tpm-1", "assigned", "op-1", attestation_type="tpm", tpm_authentication_key="AAEC")
    async with store.begin() as uow:
        await uow.registrations.put(record)
    async with store.read() as uow:
        got = await uow.registrations.get("tpm-1")
    assert got is not None and got.tpm_authentication_key == "AAEC"
    assert got.to_json()["tpm"] == {"authenticationKey": "AAEC"}
