"""Helpers for the certificate-issuance tests: device CSRs, and `openssl verify` of what came back.

`openssl verify` is the judge on purpose: it is what a device's TLS stack or an operator would
use, and it is not the code that made the certificate. When the binary is missing the helper
raises (.ci/run installs openssl), so a verification never silently does not happen.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotdps.pki import certs_to_pem

__all__ = ["csr_b64", "make_csr", "openssl_verify"]

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make_csr(
    cn: str | None,
    key: CsrKey | None = None,
    *,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    extra_names: Sequence[x509.NameAttribute] = (),
) -> x509.CertificateSigningRequest:
    """A CSR signed by `key` (a new P-256 key by default) with CN `cn` (none if None)."""
    signing_key = key or ec.generate_private_key(ec.SECP256R1())
    names = list(extra_names)
    if cn is not None:
        names.append(x509.NameAttribute(x509.NameOID.COMMON_NAME, cn))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def csr_b64(csr: x509.CertificateSigningRequest) -> str:
    """The 2025-07-01-preview `csr` form: base64 DER, no armour, no line breaks."""
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode("ascii")


def openssl_verify(
    directory: Path,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate] | bytes,
    *,
    name: str = "chain",
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict -purpose sslclient` of chain[0], with chain[1:] as untrusted
    intermediates, against `anchors` (certificates, or PEM bytes such as a trust bundle's)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl binary is missing: apt-get install openssl")
    leaf = directory / f"{name}.leaf.pem"
    untrusted = directory / f"{name}.untrusted.pem"
    cafile = directory / f"{name}.anchors.pem"
    leaf.write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
    args = ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(cafile)]
    if len(chain) > 1:
        untrusted.write_bytes(certs_to_pem(list(chain[1:])))
        args += ["-untrusted", str(untrusted)]
    cafile.write_bytes(anchors if isinstance(anchors, bytes) else certs_to_pem(list(anchors)))
    return subprocess.run([*args, str(leaf)], capture_output=True, text=True, timeout=60, check=False)
