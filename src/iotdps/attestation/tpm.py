"""TPM attestation: explicitly unsupported for now.

Enrollments keep the endorsement and storage root keys so that adding the HTTPS nonce challenge
(azure-wire-protocol.md 3) later needs no migration; a device that tries TPM today gets a clear
UNSUPPORTED_ATTESTATION refusal, never a crash. `tpm_crypto` already does the service's side of
the challenge in software (keys, names, the activation blob).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from iotdps.attestation.authentication import Authentication, refuse
from iotdps.enrollment.models import AttestationType
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason

__all__ = ["TpmMechanism"]


class TpmMechanism:
    name: AttestationType = "tpm"

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication:
        return refuse("tpm", RefusalReason.UNSUPPORTED_ATTESTATION, "TPM attestation is not supported yet")
