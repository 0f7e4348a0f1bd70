"""What a device proves itself with: a symmetric key, an X.509 certificate and key, or a TPM.

Hub SAS tokens are device-scoped (azure-wire-protocol.md 8.1): `sr` is the percent-encoded
`{hostname}/devices/{deviceId}`, no `skn`. DPS tokens use `{scope}/registrations/{id}` (1.3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from iotdps.sas import SAS_PREFIX, derive_device_key, make_sas_token
from iotdps.secret import Secret

__all__ = [
    "Credential",
    "SymmetricKey",
    "TpmCredential",
    "TpmSigner",
    "X509Files",
    "make_hub_sas_token",
    "tls_context",
]


@dataclass(frozen=True, slots=True)
class SymmetricKey:
    """The device's own key; for a group enrollment, `from_group` derives it."""

    key: Secret[str]

    @classmethod
    def from_group(cls, group_key: Secret[str], registration_id: str) -> SymmetricKey:
        return cls(Secret(derive_device_key(group_key.reveal(), registration_id)))

    def dps_token(self, id_scope: str, registration_id: str, ttl: int = 3600) -> str:
        return make_sas_token(id_scope, registration_id, self.key.reveal(), int(time.time()) + ttl)

    def hub_token(self, hostname: str, device_id: str, ttl: int = 3600) -> str:
        return make_hub_sas_token(hostname, device_id, self.key.reveal(), int(time.time()) + ttl)


@dataclass(frozen=True, slots=True)
class X509Files:
    """PEM files: the certificate (leaf first, intermediates after) and its private key."""

    cert_file: Path
    key_file: Path
    passphrase: Secret[str] | None = None


class TpmSigner(Protocol):
    """What the client needs of a TPM (iotdps.device.tpm.Tpm): its keys, the blob import, HMAC."""

    def endorsement_key(self) -> bytes: ...

    def storage_root_key(self) -> bytes: ...

    def activate(self, blob: bytes) -> None: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TpmCredential:
    """A TPM device (azure-wire-protocol.md 3): SAS tokens are signed inside the TPM with the key
    imported from the service's activation blob; no key is ever held in memory here."""

    tpm: TpmSigner

    def _sign(self, sr: str, ttl: int) -> tuple[str, int]:
        expiry = int(time.time()) + ttl
        signed = self.tpm.sign(f"{sr}\n{expiry}".encode())
        return quote(base64.b64encode(signed).decode("ascii"), safe=""), expiry

    def dps_token(self, id_scope: str, registration_id: str, ttl: int = 3600) -> str:
        # The C and Node SDKs' token: sr upper-case percent-encoded, skn=registration.
        sr = quote(f"{id_scope}/registrations/{registration_id}", safe="")
        sig, expiry = self._sign(sr, ttl)
        return f"{SAS_PREFIX}sr={sr}&sig={sig}&se={expiry}&skn=registration"

    def hub_token(self, hostname: str, device_id: str, ttl: int = 3600) -> str:
        sr = quote(f"{hostname}/devices/{device_id}", safe="")
        sig, expiry = self._sign(sr, ttl)
        return f"{SAS_PREFIX}sr={sr}&sig={sig}&se={expiry}"


Credential = SymmetricKey | X509Files | TpmCredential


def make_hub_sas_token(hostname: str, device_id: str, key_b64: str, expiry: int) -> str:
    sr = quote(f"{hostname}/devices/{device_id}", safe="")
    signed = hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = quote(base64.b64encode(signed).decode("ascii"), safe="")
    return f"{SAS_PREFIX}sr={sr}&sig={sig}&se={expiry}"


def tls_context(ca_pem: str | None, credential: Credential) -> ssl.SSLContext:
    """TLS 1.2 with host name checks; trusts only `ca_pem` when given (as the SDK does).

    Exactly TLS 1.2, as azure-iot-device 2.14.0 speaks (it pins PROTOCOL_TLSv1_2): the
    simulator's devices then cost the service what real devices cost, and the benchmarks
    measure the handshake they claim to. The service itself accepts TLS 1.3 too."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(credential, X509Files):
        password = credential.passphrase.reveal() if credential.passphrase else None
        context.load_cert_chain(credential.cert_file, credential.key_file, password)
    return context
