"""The server's own TLS identity: a server CA and a server certificate under `<data_dir>/tls`.

Made on first start; on a later start the certificate is reissued (by the same CA, so devices
keep trusting it) when the configured names grew beyond its SANs or it is near expiry. The
devices are given `server-ca.pem` only.

The CA key is encrypted at rest. Its passphrase comes from IOTDPS_SERVER_CA_PASSPHRASE; when
that is unset on first start one is generated into `tls/server-ca.passphrase` (mode 0600),
which an operator should move into a secret store and pass through the environment instead.
The server certificate's own key must be readable at every start without a person present,
so it is stored unencrypted, 0600, as web servers do.

The CA key can live in a PKCS#11 token instead (server/ca_key.py): with `[tls] ca_pkcs11_uri`
set, the first start makes it inside the token (sensitive, never extractable) and records its
URI in `tls/server-ca.pkcs11`; no key file and no passphrase exist then. Every start with a
token-held CA logs in to the token and finds the key, so a wrong PIN or a missing token stops
the start at once rather than on the day the certificate needs reissuing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.config import is_ip_address
from iotdps.errors import ConfigError, InvalidInput
from iotdps.fsutil import atomic_write, atomic_write_many
from iotdps.pki import (
    Issuer,
    Validity,
    create_server_identity,
    encode_private_key,
    generate_private_key,
    issue_server_certificate,
    load_certificates,
)
from iotdps.pki.custody import token_key_uri
from iotdps.pki.external_signing import Signer
from iotdps.pki.keys import PrivateKey
from iotdps.pki.pkcs11_uri import Pkcs11Uri
from iotdps.pki.profiles import create_root_ca
from iotdps.secret import Secret
from iotdps.server.ca_key import CaKeyPlace, ServerCaKeyError, ca_signer, new_token_ca_key

__all__ = ["PASSPHRASE_ENV", "ServerFiles", "ensure_server_identity", "server_ca_passphrase"]

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "IOTDPS_SERVER_CA_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)
# Reissue the server certificate when less than this much validity is left.
_RENEW_BEFORE = dt.timedelta(days=30)
SERVER_DAYS = 825
CA_DAYS = 3650  # the server CAs made here and by a rotation (server/ca_rotation.py)
_CA_NAME = "iotdps server CA"


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


def issue_server_leaf(
    ca: x509.Certificate, signer: PrivateKey | Signer, dns: Sequence[str], ips: Sequence[str]
) -> tuple[x509.Certificate, PrivateKey]:
    """A new server key and its certificate from the server CA (`signer`: its file key or its
    token key) for `dns` and `ips`: one place for the leaf's validity and profile, used at
    start-up and by a rotation's activation (server/ca_rotation.py)."""
    server_key = generate_private_key()
    cert = issue_server_certificate(
        Issuer(ca, signer, name="server-ca"),
        server_key.public_key(),
        Validity.days(SERVER_DAYS),
        dns_names=list(dns),
        ip_addresses=list(ips),
        clamp=True,
    )
    return cert, server_key


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
    data_dir: Path,
    names: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    ca_pkcs11_uri: str | None = None,
) -> ServerFiles:
    """The server's CA and certificate under `data_dir/tls`: made on first start (the CA key in
    the token `ca_pkcs11_uri` names, when given), reissued when names or expiry call for it."""
    env = os.environ if environ is None else environ
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem, ca_key = tls_dir / "server-ca.pem", tls_dir / "server-ca.key"
    chain_pem, key_pem = tls_dir / "server.pem", tls_dir / "server.key"
    dns, ips = _split(names)
    configured = _configured_uri(ca_pkcs11_uri)
    place = CaKeyPlace(tls_dir)

    if not ca_pem.exists():
        if configured is not None:
            return _create_in_token(tls_dir, configured, dns, ips, env)
        passphrase, passfile = _passphrase(tls_dir, env, create=True)
        identity = create_server_identity(dns_names=dns, ip_addresses=ips, days=SERVER_DAYS)
        place.uri_file.unlink(missing_ok=True)  # from a token start that stopped before its certificate
        atomic_write(ca_key, encode_private_key(identity.ca_key, passphrase), mode=0o600)
        _write_server(chain_pem, key_pem, identity.certificate, identity.ca_certificate, identity.key)
        # The CA certificate last: its presence marks a complete identity.
        atomic_write(ca_pem, identity.ca_certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
        return ServerFiles(ca_pem, chain_pem, key_pem, True, False, passfile)

    ca_cert = load_certificates(ca_pem.read_bytes())[0]
    _check_custody(place, configured)
    current = load_certificates(chain_pem.read_bytes())[0] if chain_pem.exists() else None
    now = dt.datetime.now(dt.UTC)
    fresh = current is not None and current.not_valid_after_utc - now > _RENEW_BEFORE and key_pem.exists()
    reissue = not (fresh and current is not None and _covers(current, names))
    in_token = place.custody() == "token"
    if not reissue and not in_token:
        return ServerFiles(ca_pem, chain_pem, key_pem, False, False, None)
    # The passphrase file (if that is where it is) is reported, as on first start.
    passfile = None if in_token else _passphrase(tls_dir, env, create=False)[1]

    def ca_passphrase() -> Secret[str]:
        return _passphrase(tls_dir, env, create=False)[0]

    # A token-held CA is reached at every start (see the module doc).
    with ca_signer(place, ca_cert, ca_passphrase, env) as key:
        if not reissue:
            return ServerFiles(ca_pem, chain_pem, key_pem, False, False, None)
        cert, server_key = issue_server_leaf(ca_cert, key, dns, ips)
    _write_server(chain_pem, key_pem, cert, ca_cert, server_key)
    if in_token:
        log.info("the server certificate was reissued, signed through the PKCS#11 token (%s)", place.token_uri())
    return ServerFiles(ca_pem, chain_pem, key_pem, False, True, passfile)


def _configured_uri(text: str | None) -> Pkcs11Uri | None:
    if not text:
        return None
    try:
        return token_key_uri(text)
    except InvalidInput as exc:
        raise ServerCaKeyError(f"tls.ca_pkcs11_uri: {exc.message}") from None


def _check_custody(place: CaKeyPlace, configured: Pkcs11Uri | None) -> None:
    """The configuration and the data dir agree on where the CA key is; the data dir's record
    (tls/server-ca.pkcs11) names the key, since a rotation makes its successor elsewhere."""
    if configured is None:
        return
    if place.custody() == "file":
        raise ServerCaKeyError(
            f"tls.ca_pkcs11_uri is set, but the server CA's key is the file {place.key_file}: move it into "
            "the token once with `iotdps tls move-to-token --pkcs11-uri URI` (or unset tls.ca_pkcs11_uri)"
        )
    recorded = place.token_uri()
    if recorded is not None and configured.token and recorded.token and configured.token != recorded.token:
        raise ServerCaKeyError(
            f"tls.ca_pkcs11_uri names token {configured.token!r}, but the server CA's key is in token "
            f"{recorded.token!r} ({place.uri_file})"
        )


def _create_in_token(
    tls_dir: Path, uri: Pkcs11Uri, dns: list[str], ips: list[str], env: Mapping[str, str]
) -> ServerFiles:
    """First start with the CA key in a token: key made there, nothing written before it."""
    ca_pem, chain_pem, key_pem = tls_dir / "server-ca.pem", tls_dir / "server.pem", tls_dir / "server.key"
    with new_token_ca_key(uri, env) as signer:
        ca = create_root_ca(_CA_NAME, signer, Validity.days(CA_DAYS), path_length=0)
        cert, server_key = issue_server_leaf(ca, signer, dns, ips)
        recorded = signer.uri
        custody = signer.custody()
    log.info("the server CA key is in PKCS#11 token %r as %r: %s", recorded.token, recorded.object, custody)
    place = CaKeyPlace(tls_dir)
    place.record_uri(recorded)
    place.key_file.unlink(missing_ok=True)  # from a file start that stopped before its certificate
    _write_server(chain_pem, key_pem, cert, ca, server_key)
    atomic_write(ca_pem, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)  # last, as above
    return ServerFiles(ca_pem, chain_pem, key_pem, True, False, None)


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
