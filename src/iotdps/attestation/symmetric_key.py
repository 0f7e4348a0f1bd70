"""Symmetric-key attestation: a SAS token signed with an enrollment's key or a group-derived key.

The token's form, resource, expiry and lifetime are checked first (`iotdps.sas`, no key needed);
precedence (`enrollment.resolve`) then finds the enrollment whose key verifies the signature. The
hub identity of an admitted device gets the key the device signs with: the individual
enrollment's own, or the group key derived for this registration id (azure-wire-protocol.md 1.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.attestation.tpm import authenticate_sas
from iotdps.enrollment.models import AttestationType, EnrollmentGroup, IndividualEnrollment
from iotdps.enrollment.resolve import resolve_symmetric_key
from iotdps.evidence import SasCredential
from iotdps.hub.devices import DeviceAuth
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason
from iotdps.sas import DEFAULT_TOKEN_MAX_LIFETIME, SasCheck, check_token, derive_device_key, parse_sas
from iotdps.secret import Secret

__all__ = ["SymmetricKeyMechanism"]


class SymmetricKeyMechanism:
    name: AttestationType = "symmetricKey"

    def __init__(self, max_token_lifetime: int = DEFAULT_TOKEN_MAX_LIFETIME) -> None:
        self.max_token_lifetime = max_token_lifetime

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        sas: SasCredential = credential
        if not sas.token.reveal():
            return refuse("symmetricKey", RefusalReason.SAS_MISSING, "the device sent no SAS token")
        parsed = parse_sas(sas.token.reveal())
        if isinstance(parsed, SasCheck):
            return refuse("symmetricKey", parsed.reason, parsed.message)
        checked = check_token(parsed, id_scope, registration_id, now, self.max_token_lifetime)
        if checked is not None:
            return refuse("symmetricKey", checked.reason, checked.message)
        individual = await uow.enrollments.get(registration_id)
        if individual is not None and individual.attestation.tpm is not None:
            # A TPM device's status lookups carry only the SAS its TPM signed (3.2 step 4).
            return authenticate_sas(individual, parsed, [])
        groups: Sequence[EnrollmentGroup] = () if individual is not None else await uow.groups.list_symmetric_key()
        decision = resolve_symmetric_key(registration_id, parsed, individual, groups)
        auth: DeviceAuth | None = None
        if decision.admitted:
            auth = _sas_device_auth(registration_id, decision.individual, decision.group)
        return Authentication(decision, "symmetricKey", auth, {"symmetricKey": {}})


def _sas_device_auth(
    registration_id: str, individual: IndividualEnrollment | None, group: EnrollmentGroup | None
) -> DeviceAuth | None:
    # The hub identity gets the same key material the device signs with (azure-wire-protocol.md 1.3).
    if individual is not None and individual.attestation.symmetric_key is not None:
        primary, secondary = individual.attestation.symmetric_key.keys()
        return DeviceAuth("sas", Secret(primary), Secret(secondary))
    if group is not None and group.attestation.symmetric_key is not None:
        primary, secondary = group.attestation.symmetric_key.keys()
        return DeviceAuth(
            "sas",
            Secret(derive_device_key(primary, registration_id)),
            Secret(derive_device_key(secondary, registration_id)),
        )
    return None
