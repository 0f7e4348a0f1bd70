"""The `tpm` member of a device's register body, checked at the edge (azure-wire-protocol.md 3.1).

Only the shape is checked here (strings, a bounded size); whether the keys are TPM keys, and the
enrollment's, is attestation's business (`attestation.tpm`), which refuses with words.
"""

from __future__ import annotations

from iotdps.evidence import TpmEvidence
from iotdps.secret import Secret

__all__ = ["tpm_evidence"]

# A base64 TPM2B_PUBLIC of an RSA-2048 key is about 430 characters; leave room, refuse floods.
_MAX_KEY_CHARS = 2048


def tpm_evidence(doc: object, sas: str | None) -> TpmEvidence | str:
    """The evidence, or the words of a 400 when the member is malformed."""
    if not isinstance(doc, dict):
        return "tpm must be an object with an endorsementKey"
    ek = doc.get("endorsementKey")
    srk = doc.get("storageRootKey")
    if not isinstance(ek, str) or not ek.strip():
        return "tpm.endorsementKey must be a base64 string"
    if srk is not None and not isinstance(srk, str):
        return "tpm.storageRootKey must be a base64 string"
    if len(ek) > _MAX_KEY_CHARS or (srk is not None and len(srk) > _MAX_KEY_CHARS):
        return "tpm keys are too long for TPM2B_PUBLIC structures"
    return TpmEvidence(ek, srk or None, Secret(sas) if sas else None)
