"""The attestation mechanisms, one module each, keyed by the type of credential they take.

`mechanism_for` answers a credential type nobody registered with None, which the provisioning
service turns into UNSUPPORTED_ATTESTATION, never a crash. A new mechanism is a module beside
x509.py, symmetric_key.py and tpm.py implementing `authentication.Mechanism`, and one line here.
"""

from __future__ import annotations

from iotdps.attestation.authentication import Mechanism
from iotdps.attestation.symmetric_key import SymmetricKeyMechanism
from iotdps.attestation.tpm import TpmMechanism
from iotdps.attestation.x509 import X509Mechanism
from iotdps.evidence import SasCredential, TpmEvidence, X509Evidence

__all__ = ["mechanism_for"]

_MECHANISMS: dict[type, Mechanism] = {
    X509Evidence: X509Mechanism(),
    SasCredential: SymmetricKeyMechanism(),
    TpmEvidence: TpmMechanism(),
}


def mechanism_for(credential: object, *, max_token_lifetime: int | None = None) -> Mechanism | None:
    """The mechanism for this credential's type; `max_token_lifetime` overrides the default
    maximum lifetime of SAS tokens (seconds)."""
    if max_token_lifetime is not None and isinstance(credential, SasCredential):
        return SymmetricKeyMechanism(max_token_lifetime)
    if max_token_lifetime is not None and isinstance(credential, TpmEvidence):
        return TpmMechanism(max_token_lifetime)
    return _MECHANISMS.get(type(credential))
