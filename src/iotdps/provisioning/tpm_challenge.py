"""The first half of TPM registration: the 401 challenge (azure-wire-protocol.md 3.2 steps 1-2).

A TPM device's first register request carries its EK and SRK and no SAS. If the EK is the one
enrolled for the registration id, the device gets an activation blob that only its TPM can open;
otherwise it gets the same terse refusal as any unauthenticated device, and the reason in words
goes to the refusal log. Nothing is written but that refusal: the challenge key belongs to the
enrollment (`attestation.tpm`), so a challenge holds no state and asking again is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.attestation.tpm import KEY_NAME, challenge, match_enrollment
from iotdps.errors import InvalidRegistrationId
from iotdps.evidence import TpmEvidence
from iotdps.ids import check_registration_id
from iotdps.provisioning.registration import RegistrationOutcome
from iotdps.provisioning.service import ProvisioningService
from iotdps.refusals import RefusalReason

__all__ = ["TpmChallenge", "tpm_challenge"]


@dataclass(frozen=True, slots=True)
class TpmChallenge:
    """The 401 body: `{authenticationKey, keyName}` and no status (3.2 step 2)."""

    authentication_key: str
    key_name: str = KEY_NAME

    def to_json(self) -> dict[str, Any]:
        return {"authenticationKey": self.authentication_key, "keyName": self.key_name}


async def tpm_challenge(
    service: ProvisioningService, id_scope: str, registration_id: str, evidence: TpmEvidence, *, peer: str | None
) -> TpmChallenge | RegistrationOutcome:
    """The challenge for this TPM, or the refusal (logged) when none can be given."""
    auth = await _match(service, id_scope, registration_id, evidence)
    if isinstance(auth, TpmChallenge):
        return auth
    await service.record_refusal(registration_id, auth, peer)
    decision = auth.decision
    return RegistrationOutcome(None, None, decision.reason, decision.message, decision.steps)


async def _match(
    service: ProvisioningService, id_scope: str, registration_id: str, evidence: TpmEvidence
) -> TpmChallenge | Authentication:
    try:
        check_registration_id(registration_id)
    except InvalidRegistrationId as exc:
        return refuse(None, RefusalReason.INVALID_REGISTRATION_ID, exc.message)
    async with service.store.read() as uow:
        settings = await service.service_settings(uow)
        if id_scope.lower() != settings.id_scope.lower():
            mismatch = f"ID scope {id_scope!r} is not this service's ({settings.id_scope})"
            return refuse(None, RefusalReason.ID_SCOPE_MISMATCH, mismatch)
        device = await match_enrollment(uow, registration_id, evidence)
    if isinstance(device, Authentication):
        return device
    # Two RSA-OAEP encryptions and the wrap, outside the read transaction.
    return TpmChallenge(challenge(device).blob_b64)
