"""TPM attestation (azure-wire-protocol.md 3): the EK names the enrollment, a challenge proves the TPM.

A TPM device registers twice over HTTPS. First without a SAS: `challenge` finds the individual
enrollment of the registration id, checks the EK the device sent against it and builds an
activation blob (`tpm_crypto`) that wraps the enrollment's challenge key for that TPM; the
device gets it in a 401. Only the TPM holding that EK (and the SRK the blob is bound to) can
import the key. Then with a SAS signed by the TPM with that key: `TpmMechanism.authenticate`
checks the token and, when admitted, makes the device's hub key and the second blob that
carries it (`registrationState.tpm.authenticationKey`). Status lookups authenticate with the
same SAS alone; `symmetric_key` hands such a token to `authenticate_sas` when the registration
id's enrollment is a TPM one.

The challenge key belongs to the enrollment as written (`TpmAttestation.challenge_key`): a
challenge answered after the enrollment was deleted or created again no longer verifies.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.attestation.tpm_crypto import (
    ID_KEY_BYTES,
    ActivationBlob,
    KeyRole,
    RsaTpmKey,
    TpmKeyError,
    build_activation_blob,
    parse_tpm_key_b64,
)
from iotdps.enrollment.models import AttestationType, IndividualEnrollment
from iotdps.enrollment.resolve import Decision
from iotdps.evidence import TpmEvidence
from iotdps.hub.devices import DeviceAuth
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME, SasCheck, SasToken, check_token, parse_sas, signature_matches
from iotdps.secret import Secret

__all__ = ["KEY_NAME", "TpmDevice", "TpmMechanism", "authenticate_sas", "challenge", "match_enrollment"]

KIND: AttestationType = "tpm"
# The `keyName` of the 401 challenge and the SAS `skn` the SDKs then send (3.2).
KEY_NAME = "registration"


@dataclass(slots=True)
class TpmDevice:
    """A TPM device's keys, parsed, and the individual enrollment its EK matched."""

    individual: IndividualEnrollment
    ek: RsaTpmKey
    srk: RsaTpmKey
    steps: list[str]

    @property
    def name(self) -> str:
        return f"individual enrollment {self.individual.registration_id}"

    def srk_b64(self) -> str:
        return base64.b64encode(self.srk.tpm2b_public).decode("ascii")


def _short_name(key: RsaTpmKey) -> str:
    # The EK's TPM name identifies it in words for operators (public, like a thumbprint).
    return key.name.hex()[:20].upper()


async def match_enrollment(uow: UnitOfWork, registration_id: str, evidence: TpmEvidence) -> TpmDevice | Authentication:
    """The enrollment whose EK is the device's, or the refusal saying why there is none."""
    steps: list[str] = []
    try:
        ek = parse_tpm_key_b64(evidence.endorsement_key, KeyRole.EK)
    except TpmKeyError as exc:
        return refuse(KIND, RefusalReason.TPM_INVALID_KEY, f"the device sent an invalid {exc}")
    steps.append(f"endorsement key: RSA-2048, TPM name {_short_name(ek)}...")
    individual = await uow.enrollments.get(registration_id)
    name = f"individual enrollment {registration_id}"
    if individual is None:
        steps.append(f"{name}: not found (TPM devices need an individual enrollment; groups cannot use TPM)")
        return refuse(KIND, RefusalReason.NO_ENROLLMENT, f"no individual enrollment for {registration_id}", steps)
    tpm = individual.attestation.tpm
    if tpm is None:
        steps.append(f"{name}: found, attestation {individual.attestation.type}, not tpm")
        return refuse(
            KIND,
            RefusalReason.ATTESTATION_MISMATCH,
            f"{name} uses {individual.attestation.type} attestation, not tpm",
            steps,
        )
    try:
        enrolled = parse_tpm_key_b64(tpm.endorsement_key, KeyRole.EK).name
    except TpmKeyError as exc:  # written before keys were validated: say so, never crash
        steps.append(f"{name}: its endorsement key is not valid ({exc})")
        return refuse(KIND, RefusalReason.TPM_INVALID_KEY, f"{name} holds an invalid {exc}", steps)
    if not secrets.compare_digest(enrolled, ek.name):
        steps.append(f"{name}: found, tpm, but its endorsement key is another TPM's")
        return refuse(
            KIND,
            RefusalReason.TPM_EK_MISMATCH,
            f"the device's endorsement key (TPM name {_short_name(ek)}...) is not the one enrolled"
            f" for {registration_id}",
            steps,
        )
    steps.append(f"{name}: found, tpm, endorsement key matches")
    srk_text = evidence.storage_root_key or tpm.storage_root_key
    if srk_text is None:
        steps.append(f"{name}: the device sent no storage root key and the enrollment holds none")
        return refuse(
            KIND,
            RefusalReason.TPM_INVALID_KEY,
            "no storage root key: the device sent none and the enrollment has none",
            steps,
        )
    try:
        srk = parse_tpm_key_b64(srk_text, KeyRole.SRK)
    except TpmKeyError as exc:
        return refuse(KIND, RefusalReason.TPM_INVALID_KEY, f"the device sent an invalid {exc}", steps)
    return TpmDevice(individual, ek, srk, steps)


def challenge(device: TpmDevice) -> ActivationBlob:
    """The 401 challenge's `authenticationKey`: the enrollment's challenge key for this TPM."""
    tpm = device.individual.attestation.tpm
    assert tpm is not None
    key = base64.b64decode(tpm.challenge_key.reveal())
    return build_activation_blob(device.ek, device.srk, key=key)


def _checked_token(
    sas: Secret[str], id_scope: str, registration_id: str, now: datetime, max_lifetime: int
) -> SasToken | Authentication:
    if not sas.reveal():
        return refuse(KIND, RefusalReason.SAS_MISSING, "the device sent no SAS token")
    parsed = parse_sas(sas.reveal())
    if isinstance(parsed, SasCheck):
        return refuse(KIND, parsed.reason, parsed.message)
    checked = check_token(parsed, id_scope, registration_id, now, max_lifetime)
    if checked is not None:
        return refuse(KIND, checked.reason, checked.message)
    return parsed


def authenticate_sas(individual: IndividualEnrollment, token: SasToken, steps: list[str]) -> Authentication:
    """A checked SAS token (resource, expiry) against a TPM enrollment's challenge key. Admits
    without a hub identity: a status lookup needs none; `register` refuses such an answer."""
    tpm = individual.attestation.tpm
    assert tpm is not None
    name = f"individual enrollment {individual.registration_id}"
    if not signature_matches(token, tpm.challenge_key.reveal()):
        steps.append(f"{name}: the SAS is not signed with the key of this enrollment's TPM challenge")
        return Authentication(
            Decision(
                False,
                reason=RefusalReason.SAS_BAD_SIGNATURE,
                message=(
                    f"the SAS for {name} is not signed with its TPM challenge key (another TPM, a guessed key, "
                    "or a challenge from before the enrollment was written again)"
                ),
                steps=tuple(steps),
            ),
            KIND,
        )
    if not individual.enabled:
        steps.append(f"{name}: SAS signed by the enrolled TPM, disabled -> refuse")
        return Authentication(
            Decision(False, individual, None, RefusalReason.ENROLLMENT_DISABLED, f"{name} is disabled", tuple(steps)),
            KIND,
        )
    steps.append(f"{name}: SAS signed by the enrolled TPM, enabled -> admit")
    return Authentication(Decision(True, individual, None, None, "", tuple(steps), "primary"), KIND)


def _hub_key() -> Secret[str]:
    return Secret(base64.b64encode(secrets.token_bytes(ID_KEY_BYTES)).decode("ascii"))


class TpmMechanism:
    name: AttestationType = KIND

    def __init__(self, max_token_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME) -> None:
        self.max_token_lifetime = max_token_lifetime

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        evidence: TpmEvidence = credential
        device = await match_enrollment(uow, registration_id, evidence)
        if isinstance(device, Authentication):
            return device
        if evidence.sas is None:
            device.steps.append(f"{device.name}: no SAS yet; the device gets the challenge (401) and answers it")
            return refuse(
                KIND,
                RefusalReason.SAS_MISSING,
                "a TPM device answers the service's challenge with a SAS signed in its TPM; it sent none",
                device.steps,
            )
        token = _checked_token(evidence.sas, id_scope, registration_id, now, self.max_token_lifetime)
        if isinstance(token, Authentication):
            return Authentication(
                Decision(
                    False, reason=token.decision.reason, message=token.decision.message, steps=tuple(device.steps)
                ),
                KIND,
            )
        auth = authenticate_sas(device.individual, token, device.steps)
        if not auth.decision.admitted:
            return auth
        # The hub key: a fresh one per registration, wrapped for this TPM in the second blob
        # (3.2 step 5); the hub checks the device's tokens with it, the TPM signs them.
        primary = _hub_key()
        blob = build_activation_blob(device.ek, device.srk, key=base64.b64decode(primary.reveal()))
        context = {"tpm": {"endorsementKey": evidence.endorsement_key, "storageRootKey": device.srk_b64()}}
        return Authentication(
            auth.decision,
            KIND,
            DeviceAuth("sas", primary, _hub_key()),
            context,
            tpm_authentication_key=blob.blob_b64,
        )
