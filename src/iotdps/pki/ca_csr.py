"""A CA's certificate signing request: the factory's half of "the root never sees the factory key".

The factory makes its key (in its own token or a file) and sends a PKCS#10 request; the root
signs it offline. The request is the factory's input, not the root's policy: its signature is
checked (proof that the sender holds the key) and its public key is all that is taken from it.
Name, basicConstraints, path length and key usage come from the root's command and its own
constraints (profiles.create_intermediate_ca), whatever the request asks for; `requested`
describes what it asked so the operator sees what was overruled.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from iotdps.errors import InvalidInput
from iotdps.pki.encoding import csr_signature_verifies, load_csr, name_to_text
from iotdps.pki.external_signing import Signer, sign_csr
from iotdps.pki.issuer import signature_hash
from iotdps.pki.keys import PrivateKey
from iotdps.pki.profiles import _cn, check_public_key

__all__ = ["CaCsr", "check_ca_csr", "make_ca_csr"]


@dataclass(frozen=True)
class CaCsr:
    """A vetted CA request: the key to certify, and what the request asked for (for display)."""

    public_key: CertificatePublicKeyTypes
    subject: str
    requested: tuple[str, ...]


def check_ca_csr(data: bytes | str) -> CaCsr:
    """Parse and vet a CA's CSR (PEM, DER or base64): its self-signature must verify."""
    req = load_csr(data)
    if not csr_signature_verifies(req):
        raise InvalidInput("the CSR's signature does not verify: it was not signed by the key it carries")
    try:
        pub = req.public_key()
    except Exception:
        raise InvalidInput("the CSR's public key is not supported") from None
    key = check_public_key(pub, "CSR public key")
    asked: list[str] = []
    for ext in req.extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints):
            plen = "" if value.path_length is None else f", pathlen {value.path_length}"
            asked.append(f"CA:{'TRUE' if value.ca else 'FALSE'}{plen}")
        elif isinstance(value, x509.KeyUsage | x509.ExtendedKeyUsage | x509.SubjectAlternativeName):
            asked.append(type(value).__name__)
        else:
            asked.append(ext.oid.dotted_string)
    return CaCsr(key, name_to_text(req.subject), tuple(asked))


def make_ca_csr(common_name: str, key: PrivateKey | Signer, *, organization: str | None = None) -> bytes:
    """A PEM CSR for a CA key (in memory or a token's), CN = `common_name`. It asks for nothing:
    the root decides the CA extensions."""
    name = _cn(common_name, "the CA name")
    if organization:
        name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, organization), *name])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    csr = sign_csr(builder, key) if isinstance(key, Signer) else builder.sign(key, signature_hash(key))
    return csr.public_bytes(serialization.Encoding.PEM)
