"""The server's own TLS identity: a server CA and a server certificate under `<data_dir>/tls`.

Made on first start; on a later start the certificate is reissued (by the same CA, so devices
keep trusting it) when the configured names grew beyond its SANs or it is near expiry. The
devices are given `server-ca.pem` only.

The CA key is encrypted at rest. Its passphrase comes from IOTDPS_SERVER_CA_PASSPHRASE; when
that is unset on first start one is generated into `tls/server-ca.passphrase` (mode 0600),
which an operator should move into a secret store and pass through the environment instead.
The server certificate's own key must be readable at every start without a person present,
so it is stored unencrypted, 0600, as web servers do.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.config import is_ip_address
from iotdps.errors import ConfigError
from iotdps.fsutil import atomic_write, atomic_write_many
from iotdps.pki import (
    Issuer,
    Validity,
    create_server_identity,
    encode_private_key,
    generate_private_key,
    issue_server_certificate,
    load_certificates,
    load_private_key,
)
from iotdps.pki.keys import PrivateKey
from iotdps.secret import Secret

__all__ = ["PASSPHRASE_ENV", "ServerFiles", "ensure_server_identity", "server_ca_passphrase"]

PASSPHRASE_ENV = "IOTDPS_SERVER_CA_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
# Reissue the server certificate when less than this much validity is left.
_RENEW_BEFORE = dt.timedelta(days=30)
_SERVER_DAYS = 825


@dataclass(frozen=True, slots=True)
class ServerFiles:
    ca_pem: Path
    chain_pem: Path
    key_pem: Path
    created: bool
    reissued: bool
    passphrase_file: Path | None


def _split(names: Sequence[str]) -> tuple[list[str], list[str]]:
    dns = [n for n in names if not is_ip_address(n)]
    ips = [n for n in names if is_ip_address(n)]
    return dns, ips


def _covers(cert: x509.Certificate, names: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = {d.lower() for d in san.get_values_for_type(x509.DNSName)}
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    for name in names:
        if is_ip_address(name):
            if str(ipaddress.ip_address(name)) not in ips:
                return False
        elif name.lower() not in dns:
            return False
    return True


def _passphrase(tls_dir: Path, environ: Mapping[str, str], create: bool) -> tuple[Secret[str], Path | None]:
    value = environ.get(PASSPHRASE_ENV)
    if value:
        return Secret(value), None
    path = tls_dir / "server-ca.passphrase"
    if path.exists():
        return Secret(path.read_text(encoding="utf-8").strip()), path
    if not create:
        raise ConfigError([f"the server CA passphrase is missing: set {PASSPHRASE_ENV} or restore {path}"])
    generated = secrets.token_urlsafe(32)
    atomic_write(path, generated.encode(), mode=0o600)
    return Secret(generated), path


def server_ca_passphrase(data_dir: Path, environ: Mapping[str, str] | None = None) -> Secret[str]:
    """The server CA's passphrase from the environment or the generated file; ConfigError when
    neither has it (it is never generated here). A CA made by `iotdps tls rotate` is encrypted
    with the same one (server/ca_rotation.py)."""
    return _passphrase(data_dir / "tls", os.environ if environ is None else environ, create=False)[0]


def ensure_server_identity(
    data_dir: Path, names: Sequence[str], environ: Mapping[str, str] | None = None
) -> ServerFiles:
    env = os.environ if environ is None else environ
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem, ca_key = tls_dir / "server-ca.pem", tls_dir / "server-ca.key"
    chain_pem, key_pem = tls_dir / "server.pem", tls_dir / "server.key"
    dns, ips = _split(names)

    if not ca_pem.exists():
        passphrase, passfile = _passphrase(tls_dir, env, create=True)
        identity = create_server_identity(dns_names=dns, ip_addresses=ips, days=_SERVER_DAYS)
        atomic_write(ca_key, encode_private_key(identity.ca_key, passphrase), mode=0o600)
        _write_server(chain_pem, key_pem, identity.certificate, identity.ca_certificate, identity.key)
        # The CA certificate last: its presence marks a complete identity.
        atomic_write(ca_pem, identity.ca_certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return ServerFiles(ca_pem, chain_pem, key_pem, True, False, passfile)

    ca_cert = load_certificates(ca_pem.read_bytes())[0]
    current = load_certificates(chain_pem.read_bytes())[0] if chain_pem.exists() else None
    now = dt.datetime.now(dt.UTC)
    fresh = current is not None and current.not_valid_after_utc - now > _RENEW_BEFORE and key_pem.exists()
    if fresh and current is not None and _covers(current, names):
        return ServerFiles(ca_pem, chain_pem, key_pem, False, False, None)
    passphrase, passfile = _passphrase(tls_dir, env, create=False)
    key = load_private_key(ca_key.read_bytes(), passphrase, what="server CA key")
    issuer = Issuer(ca_cert, key, name="server-ca")
    server_key = generate_private_key()
    cert = issue_server_certificate(
        issuer, server_key.public_key(), Validity.days(_SERVER_DAYS), dns_names=dns, ip_addresses=ips, clamp=True
    )
    _write_server(chain_pem, key_pem, cert, ca_cert, server_key)
    return ServerFiles(ca_pem, chain_pem, key_pem, False, True, passfile)


def _write_server(
    chain_pem: Path, key_pem: Path, cert: x509.Certificate, ca: x509.Certificate, key: PrivateKey
) -> None:
    # Key and certificate as one unit, so a crash never pairs a new key with an old certificate.
    # The chain file holds leaf then CA; it carries no secret, but one mode for both is simpler.
    atomic_write_many(
        {
            key_pem: encode_private_key(key, None),
            chain_pem: cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM),
        },
        mode=0o600,
    )
