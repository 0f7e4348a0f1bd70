"""The audit trail's entry for a step of the built-in server CA's life (`iotdps tls`).

A step changes files and the service's shared record rather than a store record, so the entry
carries no record digests; its detail names the CAs by SHA-256 thumbprint, before and after:
the CA that signs the presented chain and every CA devices must trust (the built-in bundle).
Never a key, a passphrase or a PIN: a thumbprint is all an auditor needs to tell CAs apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iotdps.audit import Actor, AuditDraft
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.server.ca_rotation import RotationState

__all__ = ["TARGET", "step_entry"]

TARGET = "server-ca"


def step_entry(
    actor: Actor,
    step: str,
    before: RotationState,
    after: RotationState,
    facts: Mapping[str, Any] | None = None,
) -> AuditDraft:
    """The entry for `step` (rotate, activate, retire, move-to-token): action `server-ca.<step>`."""
    detail: dict[str, Any] = {
        "presentedCaBefore": sha256_thumbprint(before.active),
        "presentedCaAfter": sha256_thumbprint(after.active),
        "trustedCasBefore": [sha256_thumbprint(c) for c in before.trusted],
        "trustedCasAfter": [sha256_thumbprint(c) for c in after.trusted],
        "phase": after.phase.value,
    }
    detail.update(facts or {})
    return AuditDraft(actor, f"server-ca.{step}", TARGET, detail=detail)
