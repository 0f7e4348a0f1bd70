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
from iotdps.server.identity import PASSPHRASE_ENV, ServerFiles, ensure_server_identity, server_ca_passphrase
from iotdps.store.sql.cluster import ClusterDb

__all__ = ["POLICIES_SECRET", "SERVER_CA_SECRET", "join_service"]

log = logging.getLogger(__name__)

SERVER_CA_SECRET = "server-ca"  # noqa: S105 (a record's name)
POLICIES_SECRET = "access-policies"  # noqa: S105 (a record's name)


async def join_service(
    db: ClusterDb, data_dir: Path, names: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[ServerFiles, AccessPolicies]:
    env = os.environ if environ is None else environ
    files = await _server_ca(db, data_dir, names, env)
    policies = await _policies(db, data_dir, env)
    return files, policies


async def _server_ca(db: ClusterDb, data_dir: Path, names: Sequence[str], env: Mapping[str, str]) -> ServerFiles:
    tls = data_dir / "tls"
    created_now = False
    sealed = await db.get_secret(SERVER_CA_SECRET)
    if sealed is None:
        files = ensure_server_identity(data_dir, names, env)
        created_now = files.created
        doc = {"certificate": files.ca_pem.read_text(), "key": (tls / "server-ca.key").read_text()}
        ours = seal(SERVER_CA_SECRET, json.dumps(doc).encode(), server_ca_passphrase(data_dir, env))
        sealed = await db.put_secret_if_absent(SERVER_CA_SECRET, ours)
        if sealed == ours:
            log.info("this node initialised the shared service identity (server CA) in the database")
            return files
    shared = _load(open_sealed(SERVER_CA_SECRET, sealed, _joining_passphrase(data_dir, env)), SERVER_CA_SECRET)
    cert_pem, key_pem = shared.get("certificate"), shared.get("key")
    if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
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
        atomic_write(tls / "server-ca.key", key_pem.encode(), mode=0o600)
        atomic_write(ca_path, cert_pem.encode(), mode=0o644)
        log.info("joined the service in the database: its server CA was written to %s", ca_path)
    return ensure_server_identity(data_dir, names, env)


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
