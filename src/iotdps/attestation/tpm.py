"""TPM attestation: explicitly unsupported for now.

Enrollments keep the endorsement and storage root keys so that adding the HTTPS nonce challenge
(azure-wire-protocol.md 3) later needs no migration; a device that tries TPM today gets a clear
UNSUPPORTED_ATTESTATION refusal, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TpmEvidence"]


@dataclass(frozen=True, slots=True)
class TpmEvidence:
    """What a TPM device sends with its register request (base64 TPM2B_PUBLIC blobs)."""

    endorsement_key: str
    storage_root_key: str | None = None
