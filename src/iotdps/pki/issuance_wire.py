"""Which register-request field carries a CSR, and which registration-state fields carry the
result, per api-version (azure-wire-protocol.md section 10). One table for the MQTT and HTTPS
edges, so both render issuance the same way.

    api-version          request field          registrationState fields
    2025-07-01-preview   csr (base64 DER)       issuedCertificateChain (base64 DER, leaf..root)
    2021-11-01-preview   clientCertificateCsr   issuedClientCertificate (PEM), trustBundle

Any other api-version (2019-03-31, what azure-iot-device 2.14.0 sends) has no CSR field:
such a request is handled exactly as before issuance existed.

2025-07-01-preview defines no trust bundle field. We add `trustBundle` (the 2021 shape) there
too, as an extension: clients ignore fields they do not know, and our device client needs
the bundle whichever preview it speaks.
"""

from __future__ import annotations

from typing import Any

from iotdps.pki.issuing.base import IssuedChain
from iotdps.pki.trust_bundle import TrustBundle

__all__ = ["API_2021_11_PREVIEW", "API_2025_07_PREVIEW", "CSR_FIELDS", "csr_field", "issuance_state_fields"]

API_2025_07_PREVIEW = "2025-07-01-preview"
API_2021_11_PREVIEW = "2021-11-01-preview"

CSR_FIELDS: dict[str, str] = {API_2025_07_PREVIEW: "csr", API_2021_11_PREVIEW: "clientCertificateCsr"}


def csr_field(api_version: str) -> str | None:
    """The register-body field that carries a CSR in `api_version`, or None (no issuance)."""
    return CSR_FIELDS.get(api_version)


def issuance_state_fields(api_version: str, issued: IssuedChain | None, bundle: TrustBundle | None) -> dict[str, Any]:
    """The fields to merge into the final `registrationState` (empty for other api-versions)."""
    out: dict[str, Any] = {}
    if api_version == API_2025_07_PREVIEW:
        if issued is not None:
            out["issuedCertificateChain"] = issued.issued_certificate_chain()
    elif api_version == API_2021_11_PREVIEW:
        if issued is not None:
            out["issuedClientCertificate"] = issued.issued_client_certificate()
    else:
        return out
    if bundle is not None:
        out["trustBundle"] = bundle.to_wire()
    return out
