"""Rotating the server CA of a service whose nodes share one (PostgreSQL) database.

On one node the rotation's steps are files under `<data_dir>/tls` (server/ca_rotation.py). On a
shared store every node has such a directory, and each must present a chain from the same CA
and carry the same CAs in its bundle file; so the step is decided in the database and every
node's files follow it:

- the record `server-ca` (wiring/shared_identity.py) is the active CA, certificate and key
  (or, for a key in a PKCS#11 token, the key's URI: server/ca_key.py);
- the record `server-ca-rotation` holds the rest of the rotation: the pending new CA
  (certificate and key) between `rotate` and `activate`, the retiring CA's certificate between
  `activate` and `retire` (with its key's URI when that is in a token, for `retire` to
  destroy), and the SHA-256 thumbprints of every CA that was active before, so
  a node whose data dir still holds one of them is recognised as behind, not as foreign.

Both are sealed (iotdps.sealed) with the server CA passphrase, like the CA at join time: a node
with another passphrase can neither adopt a step nor make one. `activate` writes both records
in one transaction; every step is a compare-and-swap on the values it read
(ClusterDb.swap_secrets), so two operators cannot interleave.

Each node follows (`RotationFollower`): it polls the two records every few seconds (two small
SELECTs; they are opened only when they changed) and applies them to its own files with the
single-node functions: a pending CA goes to next/, activation runs ca_rotation.activate, which
issues this node's server certificate (its own names) from the new CA, and cert_files' reloader
presents it without a restart. A node that was down, or starts later, applies the same at its
start, before it joins (`follow`). Polling rather than NATS: a clustered node does not need
NATS (only its hubs' cross-node operations do), and a step is rare and may take seconds.

The built-in trust bundle is a record of the shared store already (provisioning/server_ca.py):
the CLI publishes it, so every node answers registrations with the same one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.access import AccessPolicies
from iotdps.audit import Actor
from iotdps.errors import ConfigError, InvalidInput, IotdpsError
from iotdps.fsutil import atomic_write
from iotdps.pki import load_certificates, load_private_key
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.pki.pkcs11_uri import Pkcs11Uri
from iotdps.sealed import open_sealed, seal
from iotdps.secret import Secret
from iotdps.server import ca_rotation
from iotdps.server.ca_audit import step_entry
from iotdps.server.ca_key import CaKeyRef, destroy_token_ca_key, key_record, parse_key_record
from iotdps.server.ca_rotation import Phase, RotationState
from iotdps.server.identity import PASSPHRASE_ENV, ServerFiles, server_ca_passphrase
from iotdps.store.sql.cluster import ClusterDb
from iotdps.wiring.shared_identity import SERVER_CA_SECRET, join_service

__all__ = [
    "ROTATION_SECRET",
    "SHARED_MARKER",
    "Audit",
    "RotationFollower",
    "SharedCa",
    "activate",
    "apply",
    "check",
    "follow",
    "join",
    "read_shared",
    "retire",
    "rotate",
]

log = logging.getLogger(__name__)

ROTATION_SECRET = "server-ca-rotation"  # noqa: S105 (a record's name)
# Written into a node's tls/ dir: `iotdps tls` on that data dir without --dsn would otherwise
# rotate the node's files alone, behind the service's back.
SHARED_MARKER = "shared-store"
_LOCK_FILE = "rotation.lock"


@dataclass(frozen=True)
class SharedCa:
    """The service's server CA and rotation step, as the database holds them (opened)."""

    active: x509.Certificate
    active_key: CaKeyRef  # PEM, encrypted with the passphrase; or the URI of the key in a token
    next: x509.Certificate | None = None
    next_key: CaKeyRef | None = None
    retiring: x509.Certificate | None = None
    retiring_key: Pkcs11Uri | None = None  # a key in a token outlives activation: retire destroys it
    previous: tuple[str, ...] = ()  # thumbprints of every CA active before `active`
    raw: tuple[str, str | None] = field(default=("", None), compare=False)  # the sealed values read
    destroyed: Pkcs11Uri | None = field(default=None, compare=False)  # retire: the token key it destroyed

    @property
    def state(self) -> RotationState:
        if self.next is not None:
            return RotationState(Phase.PENDING, self.active, next=self.next)
        if self.retiring is not None:
            return RotationState(Phase.ACTIVATED, self.active, retiring=self.retiring)
        return RotationState(Phase.NONE, self.active)

    def rotation_doc(self) -> dict[str, Any]:
        nxt = None
        if self.next is not None and self.next_key is not None:
            nxt = {"certificate": _pem(self.next), **key_record(self.next_key)}
        return {
            "next": nxt,
            "retiring": _pem(self.retiring) if self.retiring is not None else None,
            "retiring_key": str(self.retiring_key) if self.retiring_key is not None else None,
            "previous": list(self.previous),
        }


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _cert(value: object, what: str) -> x509.Certificate:
    if not isinstance(value, str):
        raise ConfigError([f"the shared secret {what!r} in the database is incomplete"])
    try:
        return load_certificates(value.encode())[0]
    except (InvalidInput, ValueError, IndexError):
        raise ConfigError([f"the shared secret {what!r} in the database holds no valid certificate"]) from None


def _open(name: str, sealed: str, passphrase: Secret[str]) -> dict[str, Any]:
    try:
        doc = json.loads(open_sealed(name, sealed, passphrase))
    except ValueError:
        raise ConfigError([f"the shared secret {name!r} in the database is not valid JSON"]) from None
    if not isinstance(doc, dict):
        raise ConfigError([f"the shared secret {name!r} in the database is not a JSON object"])
    return doc


async def read_shared(db: ClusterDb, passphrase: Secret[str]) -> SharedCa | None:
    """The service's CA and rotation step; None before any node initialised the service.
    ConfigError when they do not open with `passphrase`."""
    sealed_ca = await db.get_secret(SERVER_CA_SECRET)
    if sealed_ca is None:
        return None
    sealed_rotation = await db.get_secret(ROTATION_SECRET)
    return _parse(sealed_ca, sealed_rotation, passphrase)


def _parse(sealed_ca: str, sealed_rotation: str | None, passphrase: Secret[str]) -> SharedCa:
    ca = _open(SERVER_CA_SECRET, sealed_ca, passphrase)
    key = parse_key_record(ca, SERVER_CA_SECRET)
    shared = SharedCa(_cert(ca.get("certificate"), SERVER_CA_SECRET), key, raw=(sealed_ca, sealed_rotation))
    if sealed_rotation is None:
        return shared
    doc = _open(ROTATION_SECRET, sealed_rotation, passphrase)
    nxt, retiring, previous = doc.get("next"), doc.get("retiring"), doc.get("previous", [])
    if not isinstance(previous, list) or not all(isinstance(p, str) for p in previous):
        raise ConfigError([f"the shared secret {ROTATION_SECRET!r} in the database is damaged"])
    if isinstance(nxt, dict):
        next_key = parse_key_record(nxt, ROTATION_SECRET)
        shared = replace(shared, next=_cert(nxt.get("certificate"), ROTATION_SECRET), next_key=next_key)
    if retiring is not None:
        shared = replace(shared, retiring=_cert(retiring, ROTATION_SECRET))
    if doc.get("retiring_key") is not None:
        retiring_key = parse_key_record({"pkcs11_uri": doc["retiring_key"]}, ROTATION_SECRET)
        if not isinstance(retiring_key, Pkcs11Uri):
            raise ConfigError([f"the shared secret {ROTATION_SECRET!r} in the database is damaged"])
        shared = replace(shared, retiring_key=retiring_key)
    return replace(shared, previous=tuple(previous))


# -- the steps, decided in the database (the CLI: cli/tls_cmds.py) ---------------------------------


async def _require(db: ClusterDb, passphrase: Secret[str]) -> SharedCa:
    shared = await read_shared(db, passphrase)
    if shared is None:
        raise InvalidInput("the database holds no service yet: start a node (iotdps up) before rotating its CA")
    # The active key must open with this passphrase, or activation would fail on every node.
    # (A key in a token: each node reaches it through its own module and PIN.)
    if isinstance(shared.active_key, bytes):
        load_private_key(shared.active_key, passphrase, what="server CA key")
    return shared


@dataclass(frozen=True)
class Audit:
    """Who runs a step, and facts of theirs for its audit entry (activate: --force)."""

    actor: Actor
    facts: Mapping[str, Any] = field(default_factory=dict)


async def _swap(
    db: ClusterDb,
    before: SharedCa,
    after: SharedCa,
    passphrase: Secret[str],
    *,
    ca: bool,
    audit: Audit | None,
    step: str,
) -> None:
    new = {ROTATION_SECRET: seal(ROTATION_SECRET, json.dumps(after.rotation_doc()).encode(), passphrase)}
    if ca:
        doc = {"certificate": _pem(after.active), **key_record(after.active_key)}
        new[SERVER_CA_SECRET] = seal(SERVER_CA_SECRET, json.dumps(doc).encode(), passphrase)
    sealed_ca, sealed_rotation = before.raw
    expected = {SERVER_CA_SECRET: sealed_ca, ROTATION_SECRET: sealed_rotation}
    # The step's audit entry commits with the step itself (one transaction, ClusterDb).
    entry = None if audit is None else step_entry(audit.actor, step, before.state, after.state, audit.facts)
    if not await db.swap_secrets(SERVER_CA_SECRET, expected, new, audit=entry):
        raise InvalidInput("the server CA rotation changed while this command ran (another operator?): run it again")


async def rotate(
    db: ClusterDb, passphrase: Secret[str], environ: Mapping[str, str] | None = None, *, audit: Audit | None = None
) -> SharedCa:
    """A new CA pending beside the active one, for the whole service (its key made in the
    active one's token when that is where the active key is)."""
    shared = await _require(db, passphrase)
    if shared.state.phase is not Phase.NONE:
        raise InvalidInput(
            f"a server CA rotation is already {shared.state.phase.value}: "
            + ("activate it (iotdps tls activate)" if shared.next is not None else "retire the old CA first")
            + " before starting another"
        )
    key: CaKeyRef
    if isinstance(shared.active_key, Pkcs11Uri):
        ca, key = ca_rotation.new_token_ca(shared.active_key.token, environ)
    else:
        ca, key = ca_rotation.new_ca(passphrase)
    after = replace(shared, next=ca, next_key=key)
    await _swap(db, shared, after, passphrase, ca=False, audit=audit, step="rotate")
    return after


async def activate(db: ClusterDb, passphrase: Secret[str], *, audit: Audit | None = None) -> SharedCa:
    """The pending CA becomes the active one (the old one retiring); repeated: nothing to do."""
    shared = await _require(db, passphrase)
    if shared.state.phase is Phase.ACTIVATED:
        return shared
    if shared.next is None or shared.next_key is None:
        raise InvalidInput("no server CA rotation is pending: start one with iotdps tls rotate")
    if isinstance(shared.next_key, bytes):
        load_private_key(shared.next_key, passphrase, what="new server CA key")
    after = SharedCa(
        shared.next,
        shared.next_key,
        retiring=shared.active,
        retiring_key=shared.active_key if isinstance(shared.active_key, Pkcs11Uri) else None,
        previous=(*shared.previous, sha256_thumbprint(shared.active)),
    )
    await _swap(db, shared, after, passphrase, ca=True, audit=audit, step="activate")
    return after


async def retire(
    db: ClusterDb, passphrase: Secret[str], environ: Mapping[str, str] | None = None, *, audit: Audit | None = None
) -> SharedCa:
    """The retiring CA leaves the service's bundle (its thumbprint stays in `previous`); its key
    object in the token, if that is where it was, is destroyed first (a retire that stops
    between the two finds it gone when run again)."""
    shared = await _require(db, passphrase)
    if shared.state.phase is not Phase.ACTIVATED:
        raise InvalidInput(
            "there is no old server CA to retire: "
            + ("activate the new one first (iotdps tls activate)" if shared.next is not None else "no rotation")
        )
    destroyed = None
    if shared.retiring_key is not None and shared.retiring is not None and shared.retiring_key != shared.active_key:
        # Checked against the retired certificate: a mix-up never destroys another key.
        destroy_token_ca_key(shared.retiring_key, shared.retiring, environ)
        destroyed = shared.retiring_key
    after = replace(shared, retiring=None, retiring_key=None)
    await _swap(db, shared, after, passphrase, ca=False, audit=audit, step="retire")
    return replace(after, destroyed=destroyed)


# -- each node's files follow ----------------------------------------------------------------------


def apply(data_dir: Path, shared: SharedCa, environ: Mapping[str, str] | None = None) -> RotationState | None:
    """Make this data dir's files say what `shared` says; None when the data dir holds no
    server CA (a fresh node: joining writes the active one). ConfigError when it holds a CA
    the service never had (another service's data dir)."""
    tls = data_dir / "tls"
    if not (tls / "server-ca.pem").exists():
        return None
    # The node and `iotdps tls` on its data dir may both apply the same step at once: one
    # after the other, so that neither removes next/ under the other's feet.
    with _locked(tls / _LOCK_FILE):
        return _apply(data_dir, shared, environ)


def check(data_dir: Path, shared: SharedCa) -> None:
    """ConfigError when this data dir holds a server CA the service never had (another
    service's data dir: following would overwrite its identity)."""
    path = data_dir / "tls" / "server-ca.pem"
    if not path.exists():
        return
    local = ca_rotation.read_state(data_dir).active
    if local != shared.active and sha256_thumbprint(local) not in shared.previous:
        raise ConfigError(
            [
                f"{path} is not the server CA of the service in the database, nor one it "
                "rotated away from: this data dir belongs to another service"
            ]
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _apply(data_dir: Path, shared: SharedCa, environ: Mapping[str, str] | None) -> RotationState | None:
    tls = data_dir / "tls"
    check(data_dir, shared)
    if ca_rotation.read_state(data_dir).active != shared.active and not _catch_up(data_dir, shared, environ):
        return None
    nxt = (shared.next, shared.next_key) if shared.next is not None and shared.next_key is not None else None
    state = ca_rotation.mirror(data_dir, nxt, shared.retiring)
    marker = b"this node's server CA follows the shared database (iotdps tls --dsn)\n"
    atomic_write(tls / SHARED_MARKER, marker, mode=0o600)
    return state


def _catch_up(data_dir: Path, shared: SharedCa, environ: Mapping[str, str] | None) -> bool:
    """This node still presents a CA the service rotated away from: switch as `activate` would
    have here (a server certificate for this node's names from the active CA). False when the
    data dir was made fresh instead (joining then adopts the active CA)."""
    tls = data_dir / "tls"
    if not (tls / "server.pem").exists():
        # Nothing presented, so no names to keep: as good as fresh. The certificate first: its
        # presence marks a complete identity.
        (tls / "server-ca.pem").unlink()
        (tls / "server-ca.key").unlink(missing_ok=True)
        (tls / "server-ca.pkcs11").unlink(missing_ok=True)
        return False
    ca_rotation.stage_next(data_dir, shared.active, shared.active_key)
    ca_rotation.activate(data_dir, environ)
    log.info(
        "the service's server CA was rotated: this node now presents a certificate from %s",
        shared.active.subject.rfc4514_string(),
    )
    return True


def _passphrase(data_dir: Path, environ: Mapping[str, str]) -> Secret[str]:
    try:
        return server_ca_passphrase(data_dir, environ)
    except ConfigError:
        raise ConfigError(
            [
                "the database holds a service another node initialised; to join it, set "
                f"{PASSPHRASE_ENV} to that service's server CA passphrase"
            ]
        ) from None


async def follow(db: ClusterDb, data_dir: Path, environ: Mapping[str, str] | None = None) -> SharedCa | None:
    """Apply the database's rotation step to this data dir (at a node's start, before and after
    it joins); the step applied, None when there is no service yet or nothing to apply to."""
    env = os.environ if environ is None else environ
    if await db.get_secret(SERVER_CA_SECRET) is None:
        return None
    shared = await read_shared(db, _passphrase(data_dir, env))
    if shared is None or apply(data_dir, shared, env) is None:
        return None
    return shared


async def join(
    db: ClusterDb,
    data_dir: Path,
    names: Sequence[str],
    environ: Mapping[str, str] | None = None,
    *,
    ca_pkcs11_uri: str | None = None,
) -> tuple[ServerFiles, AccessPolicies]:
    """join_service, for a data dir that may be behind the service's CA rotation: it catches up
    first (or joining would take it for another service's), and after joining it learns the
    rotation's other CA (a fresh data dir receives only the active one)."""
    await follow(db, data_dir, environ)
    joined = await join_service(db, data_dir, names, environ, ca_pkcs11_uri=ca_pkcs11_uri)
    await follow(db, data_dir, environ)
    return joined


class RotationFollower:
    """Polls the database and applies a changed step to this node's files (see the module doc)."""

    def __init__(self, db: ClusterDb, data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self._db = db
        self._data_dir = data_dir
        self._env = os.environ if environ is None else environ
        self._seen: tuple[str | None, str | None] | None = None  # the last step applied
        self._failed: tuple[str | None, str | None] | None = None  # the last step that failed

    async def poll(self) -> bool:
        """Look once; True when a changed step was applied. A step that fails is tried again
        at every poll (the cause may pass: a full disk), and logged the first time only."""
        raw = (await self._db.get_secret(SERVER_CA_SECRET), await self._db.get_secret(ROTATION_SECRET))
        if raw == self._seen or raw[0] is None:
            return False
        try:
            passphrase = server_ca_passphrase(self._data_dir, self._env)
            shared = _parse(raw[0], raw[1], passphrase)
            state = await asyncio.to_thread(apply, self._data_dir, shared, self._env)
        except Exception:
            first, self._failed = raw != self._failed, raw
            if first:
                raise
            return False
        self._seen, self._failed = raw, None
        if state is not None:
            log.info("server CA rotation step applied: %s", state.phase.value)
        return True

    async def run(self, stopped: asyncio.Event, interval: float) -> None:
        while not stopped.is_set():
            try:
                await self.poll()
            except IotdpsError as exc:
                log.error("the server CA rotation in the database was not applied to this node: %s", exc.message)
            except Exception:  # a follower that dies would silently leave this node behind
                log.error("the server CA rotation in the database was not applied to this node", exc_info=True)
            try:
                await asyncio.wait_for(stopped.wait(), interval)
            except TimeoutError:
                pass
