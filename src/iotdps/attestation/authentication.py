"""What an attestation mechanism answers, and the one Protocol every mechanism implements.

A mechanism turns what the device presented into an `Authentication`: the precedence decision
(which enrollment, admitted or refused, in words) plus what the hub identity needs (thumbprints
or keys) and what a custom-allocation webhook is told about the device. It reads the store
(read phase only) to fetch the candidates, then calls the pure `enrollment.resolve` functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from iotdps.enrollment.models import AttestationType
from iotdps.enrollment.resolve import Decision
from iotdps.hub.devices import DeviceAuth
from iotdps.ports import UnitOfWork
from iotdps.refusals import RefusalReason

__all__ = ["Authentication", "Mechanism", "refuse"]


@dataclass(frozen=True, slots=True)
class Authentication:
    decision: Decision
    attestation_type: AttestationType | None  # None: refused before a mechanism was chosen
    device_auth: DeviceAuth | None = None
    webhook_context: Mapping[str, Any] = field(default_factory=dict)
    leaf_sha256: str | None = None
    # X.509: the leaf's CN exactly as written (the hub compares it with the device id).
    common_name: str | None = None
    # TPM register: the activation blob wrapping `device_auth`'s key for the device's TPM.
    tpm_authentication_key: str | None = None
    # X.509: the verified path (leaf first, to its anchor), DER in base64, kept on the
    # registration record so that a later revocation shows there (provisioning.record_view).
    x509_path: tuple[str, ...] = ()


class Mechanism(Protocol):
    name: AttestationType

    async def authenticate(
        self, uow: UnitOfWork, id_scope: str, registration_id: str, credential: Any, now: datetime
    ) -> Authentication: ...


def refuse(
    kind: AttestationType | None, reason: RefusalReason, message: str, steps: Sequence[str] = ()
) -> Authentication:
    """A refusal before (or without) any enrollment matching the device."""
    return Authentication(Decision(False, reason=reason, message=message, steps=tuple(steps)), kind)
