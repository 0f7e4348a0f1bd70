"""The CA toolkit: keys, issuers, certificate profiles, CSR signing, chain explanations.

The public surface for the rest of iotdps:

* reading: `load_certificates`, `load_certificate`, `load_csr` (PEM, DER or base64 DER),
  `sha1_thumbprint`, `sha256_thumbprint`, `certificate_info` (Azure X509CertificateInfo)
* keys: `KeySpec`, `generate_private_key`, `encode_private_key`, `load_private_key`
* issuing: `Validity`, `Issuer`, `create_root_ca`, `create_intermediate_ca`,
  `issue_device_certificate`, `issue_server_certificate`, `issue_verification_certificate`,
  `sign_device_csr`, `create_server_identity` (a server CA and a server certificate in one call)
* bulk: `mint_device`, `mint_devices`, `mint_packed`, `MintedDevice`, `open_device_sink`,
  `write_device_files`
* checking: `explain_chain` (a `ChainReport` that says why, in words), `verify_chain`
* storage: `CaDirectory` (roots and intermediates by name, keys encrypted at rest)
"""

from __future__ import annotations

from iotdps.pki.batch import MintedDevice, mint_device, mint_devices, mint_packed
from iotdps.pki.cadir import CaDirectory, CaRecord, check_ca_name
from iotdps.pki.certs import describe_certificate
from iotdps.pki.chain import ChainReport, explain_chain, verify_chain
from iotdps.pki.csr import check_device_csr, sign_device_csr
from iotdps.pki.encoding import (
    X509CertificateInfo,
    certificate_info,
    certs_to_pem,
    common_name,
    der_b64,
    load_certificate,
    load_certificates,
    load_csr,
    sha1_thumbprint,
    sha256_thumbprint,
)
from iotdps.pki.issuer import Issuer, Validity
from iotdps.pki.keys import KeySpec, PrivateKey, encode_private_key, generate_private_key, load_private_key
from iotdps.pki.output import open_device_sink, write_device_files
from iotdps.pki.profiles import (
    create_intermediate_ca,
    create_root_ca,
    issue_device_certificate,
    issue_server_certificate,
    issue_verification_certificate,
)
from iotdps.pki.server import ServerIdentity, create_server_identity

__all__ = [
    "CaDirectory",
    "CaRecord",
    "ChainReport",
    "Issuer",
    "KeySpec",
    "MintedDevice",
    "PrivateKey",
    "ServerIdentity",
    "Validity",
    "X509CertificateInfo",
    "certificate_info",
    "certs_to_pem",
    "check_ca_name",
    "check_device_csr",
    "common_name",
    "create_intermediate_ca",
    "create_root_ca",
    "create_server_identity",
    "der_b64",
    "describe_certificate",
    "encode_private_key",
    "explain_chain",
    "generate_private_key",
    "issue_device_certificate",
    "issue_server_certificate",
    "issue_verification_certificate",
    "load_certificate",
    "load_certificates",
    "load_csr",
    "load_private_key",
    "mint_device",
    "mint_devices",
    "mint_packed",
    "open_device_sink",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "sign_device_csr",
    "verify_chain",
    "write_device_files",
]
