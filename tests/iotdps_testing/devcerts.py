"""Device credentials the e2e and SDK tests hand to real clients: a self-signed X.509 client
certificate written to PEM files, and a group-derived symmetric key computed independently of
iotdps (the HMAC formula from azure-wire-protocol.md, so a bug in our derivation cannot hide).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DeviceCert", "derived_key", "self_signed_device"]


@dataclass
class DeviceCert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


def self_signed_device(directory: Path, cn: str, *, days: int = 31, offset_days: int = -1) -> DeviceCert:
    """A P-256 client certificate with CN=`cn`, valid from now + `offset_days` for `days` days,
    written as `<cn>.cert.pem` and `<cn>.key.pem` (PKCS#8, unencrypted) in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=offset_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{cn}.cert.pem", directory / f"{cn}.key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return DeviceCert(cert, key, cert_file, key_file)


def derived_key(group_key: str, registration_id: str) -> str:
    """A device's key in a symmetric-key group: base64(HMAC-SHA256(group key, registration id))."""
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()
