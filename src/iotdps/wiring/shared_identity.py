"""One service, many nodes: the identity every node presents comes from the shared database.

What a device or an operator sees must not depend on the node it reached: the ID scope and the
linked hubs are records already; the server CA (certificate and key) and the access policies
were files in each node's data dir. On a shared (PostgreSQL) store they are kept in the
database too, sealed (iotdps.sealed) with the server CA passphrase (IOTDPS_SERVER_CA_PASSPHRASE,
which every node needs anyway to issue its own server certificate from the shared CA).

- The first node (no identity in the database) publishes what its data dir holds, or what it
  generates now, the usual first start.
- Every other node adopts the database's: it writes the CA and the policies into its data dir
  and issues its server certificate (its own names: each node listens on its own addresses)
  from the shared CA.
- When the server CA's key is in a PKCS#11 token (server/ca_key.py), the record holds the CA
  certificate and the key's URI, never a key: every node must reach the same token (a network
  HSM, or a token that replicates its objects) with its own IOTDPS_PKCS11_MODULE and PIN, and
  still needs IOTDPS_SERVER_CA_PASSPHRASE, which seals the records. A node follows the
  record's custody at each start: after `iotdps tls move-to-token` on one node, the others
  drop their copy of the key file and sign through the token.
- A node whose data dir already holds a different CA or different policies refuses to start
  (ConfigError): it would otherwise be a second service with the same name. Two nodes that
  initialise at the same moment race on one insert; the loser, which has just generated its
  identity, throws it away and adopts the winner's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from iotdps.access import POLICIES_FILE, AccessPolicies
from iotdps.errors import ConfigError, InvalidInput
from iotdps.fsutil import atomic_write
from iotdps.pki import load_certificates
from iotdps.sealed import open_sealed, seal
from iotdps.secret import Secret
from iotdps.server.ca_key import CaKeyPlace, adopt_shared_record, shared_key_record
from iotdps.server.identity import PASSPHRASE_ENV, ServerFiles, ensure_server_identity, server_ca_passphrase
from iotdps.store.sql.cluster import ClusterDb

__all__ = ["POLICIES_SECRET", "SERVER_CA_SECRET", "join_service", "publish_ca_custody"]

log = logging.getLogger(__name__)

SERVER_CA_SECRET = "server-ca"  # noqa: S105 (a record's name)
POLICIES_SECRET = "access-policies"  # noqa: S105 (a record's name)


async def join_service(
    db: ClusterDb,
    data_dir: Path,
    names: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    ca_pkcs11_uri: str | None = None,
) -> tuple[ServerFiles, AccessPolicies]:
    env = os.environ if environ is None else environ
    files = await _server_ca(db, data_dir, names, env, ca_pkcs11_uri)
    policies = await _policies(db, data_dir, env)
    return files, policies


async def _server_ca(
    db: ClusterDb, data_dir: Path, names: Sequence[str], env: Mapping[str, str], ca_pkcs11_uri: str | None
) -> ServerFiles:
    tls = data_dir / "tls"
    created_now = False
    sealed = await db.get_secret(SERVER_CA_SECRET)
    if sealed is None:
        files = ensure_server_identity(data_dir, names, env, ca_pkcs11_uri=ca_pkcs11_uri)
        created_now = files.created
        # A key in a token is recorded by its URI only (server/ca_key.py): never a key here.
        doc = {"certificate": files.ca_pem.read_text(), **shared_key_record(CaKeyPlace(tls))}
        ours = seal(SERVER_CA_SECRET, json.dumps(doc).encode(), server_ca_passphrase(data_dir, env))
        sealed = await db.put_secret_if_absent(SERVER_CA_SECRET, ours)
        if sealed == ours:
            log.info("this node initialised the shared service identity (server CA) in the database")
            return files
    shared = _load(open_sealed(SERVER_CA_SECRET, sealed, _joining_passphrase(data_dir, env)), SERVER_CA_SECRET)
    cert_pem = shared.get("certificate")
    if not isinstance(cert_pem, str) or not isinstance(shared.get("key", shared.get("pkcs11_uri")), str):
        raise ConfigError([f"the shared secret {SERVER_CA_SECRET!r} in the database is incomplete"])
    ca_path = tls / "server-ca.pem"
    if ca_path.exists() and not _same_certificate(ca_path.read_bytes(), cert_pem.encode()) and not created_now:
        raise ConfigError(
            [
                f"{ca_path} is not the server CA of the service in the database: this data dir belongs to "
                "another service; start the node with a fresh data dir to join"
            ]
        )
    if not ca_path.exists() or not _same_certificate(ca_path.read_bytes(), cert_pem.encode()):
        tls.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The leaf of another CA would be presented with the wrong chain: it goes, and
        # ensure_server_identity issues this node's from the shared CA.
        for stale in ("server.pem", "server.key"):
            (tls / stale).unlink(missing_ok=True)
        adopt_shared_record(CaKeyPlace(tls), shared, joining=True)
        atomic_write(ca_path, cert_pem.encode(), mode=0o644)
        log.info("joined the service in the database: its server CA was written to %s", ca_path)
    else:
        # Same CA: its key may have moved into the token since (iotdps tls move-to-token).
        adopt_shared_record(CaKeyPlace(tls), shared, joining=False)
    return ensure_server_identity(data_dir, names, env, ca_pkcs11_uri=ca_pkcs11_uri)


async def publish_ca_custody(db: ClusterDb, data_dir: Path, environ: Mapping[str, str] | None = None) -> bool:
    """After `iotdps tls move-to-token` on this node: the database's record of the server CA
    names the token key instead of holding the key (every node follows at its next start).
    False when the database holds no service identity yet (the first start publishes it)."""
    env = os.environ if environ is None else environ
    sealed = await db.get_secret(SERVER_CA_SECRET)
    if sealed is None:
        return False
    passphrase = _joining_passphrase(data_dir, env)
    shared = _load(open_sealed(SERVER_CA_SECRET, sealed, passphrase), SERVER_CA_SECRET)
    tls = data_dir / "tls"
    if not _same_certificate((tls / "server-ca.pem").read_bytes(), str(shared.get("certificate", "")).encode()):
        raise ConfigError([f"{tls / 'server-ca.pem'} is not the server CA of the service in the database"])
    doc = {"certificate": shared["certificate"], **shared_key_record(CaKeyPlace(tls))}
    resealed = seal(SERVER_CA_SECRET, json.dumps(doc).encode(), passphrase)
    if not await db.swap_secrets(SERVER_CA_SECRET, {SERVER_CA_SECRET: sealed}, {SERVER_CA_SECRET: resealed}):
        raise ConfigError([f"the shared secret {SERVER_CA_SECRET!r} changed while it was being updated; run again"])
    return True


async def _policies(db: ClusterDb, data_dir: Path, env: Mapping[str, str]) -> AccessPolicies:
    path = data_dir / POLICIES_FILE
    passphrase = server_ca_passphrase(data_dir, env)
    sealed = await db.get_secret(POLICIES_SECRET)
    just_created = False
    if sealed is None:
        local = AccessPolicies.load_or_create(data_dir)
        just_created = local.just_created
        ours = seal(POLICIES_SECRET, path.read_bytes(), passphrase)
        sealed = await db.put_secret_if_absent(POLICIES_SECRET, ours)
        if sealed == ours:
            return local
    shared = open_sealed(POLICIES_SECRET, sealed, passphrase)
    if path.exists() and _load(path.read_bytes(), str(path)) != _load(shared, POLICIES_SECRET) and not just_created:
        raise ConfigError(
            [
                f"{path} holds other access policies than the service in the database: this data dir belongs to "
                "another service; start the node with a fresh data dir to join"
            ]
        )
    atomic_write(path, shared, mode=0o600)
    return AccessPolicies.load(path)


def _joining_passphrase(data_dir: Path, env: Mapping[str, str]) -> Secret[str]:
    try:
        return server_ca_passphrase(data_dir, env)
    except ConfigError:
        raise ConfigError(
            [
                "the database holds a service another node initialised; to join it, set "
                f"{PASSPHRASE_ENV} to that service's server CA passphrase"
            ]
        ) from None


def _load(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError([f"{what} is not valid JSON"]) from None


def _same_certificate(a: bytes, b: bytes) -> bool:
    try:
        first, second = load_certificates(a)[0], load_certificates(b)[0]
    except (ValueError, IndexError, InvalidInput):
        return False
    return first.public_bytes(serialization.Encoding.DER) == second.public_bytes(serialization.Encoding.DER)
