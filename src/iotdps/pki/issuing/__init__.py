"""Issuing CAs: the seam between the registration pipeline and whatever signs device certificates.

* `CertificateIssuer`: the Protocol (name, kind, ca_chain, `await issue(csr, profile)`, close)
* `IssuedChain`: leaf, intermediates, root, and its wire renderings (section 10)
* `IssuanceError` with an `IssuanceFailure` reason: CA unreachable / refused / bad response
* `LocalIssuer`: a CA iotdps holds (key file or `Signer`); `CfsslIssuer`: a CFSSL server

The CSR an issuer takes is an `AcceptedCsr` from `iotdps.pki.csr_policy.vet_csr`.
"""

from __future__ import annotations

from iotdps.pki.issuing.base import (
    CertificateIssuer,
    IssuanceError,
    IssuanceFailure,
    IssuedChain,
    check_ca_chain,
    check_issued,
)
from iotdps.pki.issuing.cfssl import AUTHSIGN_PATH, CfsslIssuer, cfssl_auth_token
from iotdps.pki.issuing.local import LocalIssuer

__all__ = [
    "AUTHSIGN_PATH",
    "CertificateIssuer",
    "CfsslIssuer",
    "IssuanceError",
    "IssuanceFailure",
    "IssuedChain",
    "LocalIssuer",
    "cfssl_auth_token",
    "check_ca_chain",
    "check_issued",
]
