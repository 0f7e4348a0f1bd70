"""`iotdps tls`: rotate the built-in server CA (rotate, rotation status, activate, retire), and
move its key into a PKCS#11 token (move-to-token; server/ca_key.py).

These act on the data dir's files (the CA keys never leave it, or the token) and on its store
(the built-in trust bundle), so they run where the server's data dir is, not over the
management API. A running `iotdps up` on the same data dir follows them without a restart: it
presents the new chain once `activate` wrote it (server/cert_files.py), and answers
registrations with the bundle from the store. The steps and their files: server/ca_rotation.py;
the bundle and who has not received it: provisioning/server_ca.py.

On a shared (PostgreSQL) store, `--dsn`, the step is the service's: it is decided in the
database and every node's files follow it (wiring/shared_rotation.py); the data dir, when it is
one node's, is brought along at once. A node's data dir on a shared store is refused without
`--dsn`: rotating its files alone would split the service.

Every step is written to the audit trail as `server-ca.<step>` by `local:<user>`, with the CAs'
thumbprints before and after (server/ca_audit.py). On a shared store the entry commits with the
step's own transaction; on one node the step is files, and its entry commits with the bundle
publish that follows it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from iotdps.cli.pki_common import PKCS11_HELP
from iotdps.cli.shared import table
from iotdps.cli.target import local_dsn, store_options, target_params
from iotdps.errors import InvalidInput

if TYPE_CHECKING:
    from cryptography import x509

    from iotdps.audit import AuditDraft
    from iotdps.ports import Store
    from iotdps.secret import Secret
    from iotdps.server.ca_rotation import RotationState
    from iotdps.store.sql.cluster import ClusterDb
    from iotdps.wiring.shared_rotation import Audit, SharedCa

__all__ = ["register"]

T = TypeVar("T")


def _data_dir() -> Path:
    from iotdps.paths import default_data_dir

    given = target_params().get("data_dir")
    return Path(given) if given else default_data_dir()


def _with_store(fn: Callable[[Store], Awaitable[T]]) -> T:
    from iotdps.store import open_store

    async def go() -> T:
        store = await open_store(local_dsn(target_params()))
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _shared_db() -> tuple[Path, Secret[str]] | None:
    """(data dir, passphrase) when the target store is shared, None for a single node (whose
    data dir must not be a shared-store node's, see the module doc)."""
    from iotdps.server.identity import server_ca_passphrase
    from iotdps.store.sql.cluster import cluster_db
    from iotdps.wiring.shared_rotation import SHARED_MARKER

    data_dir = _data_dir()

    async def go(store: Store) -> bool:
        return cluster_db(store) is not None

    # Without --dsn the store is the data dir's own SQLite file: one node (and nothing to open
    # before read_state has said whether the data dir holds a server CA at all).
    if target_params().get("dsn") and _with_store(go):
        return data_dir, server_ca_passphrase(data_dir)
    if (data_dir / "tls" / SHARED_MARKER).exists():
        raise InvalidInput(
            f"{data_dir} is the data dir of a node on a shared database: pass that database's DSN "
            "(--dsn or IOTDPS_DSN), so that the rotation is the whole service's"
        )
    return None


def _shared_step(
    step: Callable[[ClusterDb, Secret[str]], Awaitable[SharedCa]], data_dir: Path, passphrase: Secret[str]
) -> tuple[SharedCa, int]:
    """Run a step in the database, publish the bundle it implies, bring this data dir along."""
    from iotdps.provisioning.server_ca import BUILTIN_BUNDLE_ID, publish_server_cas
    from iotdps.store.sql.cluster import cluster_db
    from iotdps.wiring import shared_rotation

    async def go(store: Store) -> tuple[SharedCa, int]:
        db = cluster_db(store)
        assert db is not None
        before = await shared_rotation.read_shared(db, passphrase)
        if before is not None:
            shared_rotation.check(data_dir, before)  # another service's data dir: nothing done

        async def publish() -> int:
            # The step read behind the bundle's row lock: of two operators' steps, the bundle
            # ends with the later one's CAs whichever publishes last.
            async with store.begin() as uow:
                await uow.trust_bundles.get(BUILTIN_BUNDLE_ID, for_update=True)
                latest = await shared_rotation.read_shared(db, passphrase)
                assert latest is not None
                return (await publish_server_cas(uow, latest.state.trusted)).version

        try:
            shared = await step(db, passphrase)
        except InvalidInput:
            if before is not None:
                await publish()  # a step that stopped between the database and the bundle completes
            raise
        version = await publish()
        shared_rotation.apply(data_dir, shared)
        return shared, version

    return _with_store(go)


def _publish(state: RotationState, entry: AuditDraft | None = None) -> int:
    """Put the CAs devices must trust now into the built-in bundle; its version. `entry`: the
    audit entry of the (file) step just done on one node, appended in the same transaction.
    The files are the change and have no transaction to share, so the entry comes right
    after them, with the bundle that completes the step: both commit or neither. A crash
    between the files and this is completed by running the step again; only `retire` then
    writes the lost entry (its re-run sees the bundle behind the files; rotate and activate
    re-runs do not tell an interrupted step from a completed one, and write none)."""
    from iotdps.provisioning.server_ca import publish_server_cas

    async def go(store: Store) -> int:
        async with store.begin() as uow:
            version = (await publish_server_cas(uow, state.trusted)).version
            if entry is not None:
                await uow.audit.append(entry)
            return version

    return _with_store(go)


def _record(entry: AuditDraft) -> None:
    """Append `entry` on its own, right after a step that has no store write of its own."""

    async def go(store: Store) -> None:
        async with store.begin() as uow:
            await uow.audit.append(entry)

    _with_store(go)


def _audit(facts: dict[str, Any] | None = None) -> Audit:
    from iotdps.cli.actor import local_actor
    from iotdps.wiring.shared_rotation import Audit

    return Audit(local_actor(), facts or {})


def _entry(step: str, before: RotationState, after: RotationState, facts: dict[str, Any] | None = None) -> AuditDraft:
    from iotdps.cli.actor import local_actor
    from iotdps.server.ca_audit import step_entry

    return step_entry(local_actor(), step, before, after, facts)


def _shared_state(data_dir: Path, passphrase: Secret[str]) -> RotationState:
    """The service's rotation step, from the shared database."""
    from iotdps.store.sql.cluster import cluster_db
    from iotdps.wiring import shared_rotation

    async def go(store: Store) -> SharedCa | None:
        db = cluster_db(store)
        assert db is not None
        return await shared_rotation.read_shared(db, passphrase)

    shared = _with_store(go)
    if shared is None:
        raise InvalidInput("the database holds no service yet: start a node (iotdps up) before rotating its CA")
    return shared.state


def _describe(cert: x509.Certificate) -> str:
    from iotdps.pki.encoding import sha256_thumbprint

    until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    return f"{cert.subject.rfc4514_string()} (SHA-256 {sha256_thumbprint(cert)[:16]}..., until {until})"


@click.group("tls")
def tls_group() -> None:
    """The server's TLS identity: rotate its CA, see who still needs the new one, activate it."""


@tls_group.command("rotate")
@store_options
def rotate_command() -> None:
    """Create a new server CA beside the current one and publish both in the built-in trust bundle.

    The server keeps presenting its current chain; devices receive the bundle
    `iotdps-server-ca` at their next registration (when their enrollment names no bundle of its
    own). The new CA's key is encrypted with the current one's passphrase
    (IOTDPS_SERVER_CA_PASSPHRASE or tls/server-ca.passphrase), or, when the current CA's key is
    in a PKCS#11 token, made in the same token (module and PIN: IOTDPS_PKCS11_*)."""
    from iotdps.server import ca_rotation

    shared = _shared_db()
    if shared is not None:
        from iotdps.wiring import shared_rotation

        data_dir = shared[0]
        audit = _audit()
        rotated, version = _shared_step(lambda db, pw: shared_rotation.rotate(db, pw, audit=audit), *shared)
        state = rotated.state
    else:
        data_dir = _data_dir()
        current = ca_rotation.read_state(data_dir)
        if current.phase is not ca_rotation.Phase.NONE:
            _publish(current)  # a rotate that stopped before the store write completes here
        state = ca_rotation.rotate(data_dir)
        version = _publish(state, _entry("rotate", current, state))
    assert state.next is not None
    click.echo(f"new server CA   {_describe(state.next)}")
    click.echo(f"current CA      {_describe(state.active)} (still presented)")
    click.echo(f"trust bundle    iotdps-server-ca version {version} carries both")
    if shared is not None:
        click.echo("nodes           every node of the service follows within seconds")
    if (data_dir / "tls" / ca_rotation.CA_BUNDLE_FILE).exists():
        click.echo(f"CA file         {data_dir / 'tls' / ca_rotation.CA_BUNDLE_FILE} (both CAs, for new devices)")
    click.echo("next            iotdps tls rotation status; then iotdps tls activate")


@tls_group.group("rotation")
def rotation_group() -> None:
    """Where a server CA rotation stands."""


@rotation_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
@store_options
def rotation_status(as_json: bool) -> None:
    """List the devices that have not yet received a trust bundle with the new CA.

    Those are the devices that activation would strand (pending) or has stranded (activated):
    their next handshake fails, because they do not trust the CA the server then presents."""
    from iotdps.provisioning.server_ca import unreached
    from iotdps.server import ca_rotation

    shared = _shared_db()
    if shared is not None:
        state = _shared_state(*shared)
    else:
        state = ca_rotation.read_state(_data_dir())
    new_ca = state.new_ca

    async def go(store: Store) -> list[Any]:
        if new_ca is None:
            return []
        async with store.read() as uow:
            return list(await unreached(uow, new_ca))

    devices = _with_store(go)
    if as_json:
        doc = {
            "phase": state.phase.value,
            "presentedCa": _describe(state.active),
            "newCa": _describe(new_ca) if new_ca is not None else None,
            "devicesWithoutNewCa": [
                {
                    "registrationId": d.registration_id,
                    "status": d.status,
                    "assignedHub": d.assigned_hub,
                    "deviceId": d.device_id,
                    "trustBundleId": d.trust_bundle_id,
                    "trustBundleVersion": d.trust_bundle_version,
                }
                for d in devices
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"phase           {state.phase.value}")
    click.echo(f"presented CA    {_describe(state.active)}")
    if new_ca is None:
        click.echo("no rotation under way (iotdps tls rotate starts one)")
        return
    if state.phase is ca_rotation.Phase.PENDING:
        click.echo(f"new CA          {_describe(new_ca)} (not presented until iotdps tls activate)")
    else:
        assert state.retiring is not None
        click.echo(f"old CA          {_describe(state.retiring)} (still in the bundle until iotdps tls retire)")
    verb = "would strand" if state.phase is ca_rotation.Phase.PENDING else "stranded"
    click.echo(f"{len(devices)} device(s) have not received a trust bundle with the new CA (activation {verb} them)")
    if devices:
        rows = [
            [d.registration_id, d.status, d.assigned_hub, d.device_id, d.trust_bundle_id, d.trust_bundle_version]
            for d in devices
        ]
        columns = ["registration id", "status", "hub", "device id", "bundle", "version"]
        table("Devices without the new CA", columns, rows)


@tls_group.command("activate")
@click.option("--force", is_flag=True, help="Activate even though some devices have not received the new CA.")
@store_options
def activate_command(force: bool) -> None:
    """Present a server certificate issued by the new CA (a running server follows, no restart).

    Refused while devices have not received the new CA (iotdps tls rotation status), unless
    --force: those devices will fail their next handshake."""
    from iotdps.provisioning.server_ca import unreached
    from iotdps.server import ca_rotation

    shared = _shared_db()
    data_dir = _data_dir()
    state = _shared_state(*shared) if shared is not None else ca_rotation.read_state(data_dir)
    facts: dict[str, Any] = {"force": force}
    if state.phase is ca_rotation.Phase.PENDING and state.next is not None:
        new_ca = state.next

        async def go(store: Store) -> int:
            async with store.read() as uow:
                return len(await unreached(uow, new_ca))

        count = _with_store(go)
        facts["devicesWithoutNewCa"] = count  # what --force stranded, for the audit trail
        if count and not force:
            raise InvalidInput(
                f"activation would strand {count} device(s) that have not received the new CA "
                "(iotdps tls rotation status lists them); re-register them first, or pass --force"
            )
    if shared is not None:
        from iotdps.wiring import shared_rotation

        audit = _audit(facts)
        done = _shared_step(lambda db, pw: shared_rotation.activate(db, pw, audit=audit), *shared)[0].state
    else:
        done = ca_rotation.activate(data_dir)
        # A repeated activate (already activated) changed nothing: no entry.
        _publish(done, _entry("activate", state, done, facts) if state.phase is ca_rotation.Phase.PENDING else None)
    click.echo(f"presented CA    {_describe(done.active)}")
    if shared is not None:
        click.echo("server chain    every node issues its own from it and presents it within seconds")
    else:
        click.echo(f"server chain    {data_dir / 'tls' / 'server.pem'} (a running server presents it within seconds)")
    click.echo("next            iotdps tls retire, once no device needs the old CA")


@tls_group.command("retire")
@store_options
def retire_command() -> None:
    """End a rotation: drop the old server CA from the built-in trust bundle and the data dir
    (and destroy its key object, when it is in a PKCS#11 token).

    Run again after it stopped half-way (or after it completed), it finishes the job: the
    bundle ends with the active CA only."""
    from iotdps.server import ca_rotation
    from iotdps.server.ca_key import CaKeyPlace

    shared = _shared_db()
    already = False
    if shared is not None:
        from iotdps.wiring import shared_rotation

        audit = _audit()

        async def step(db: ClusterDb, passphrase: Secret[str]) -> SharedCa:
            nonlocal already
            found = await shared_rotation.read_shared(db, passphrase)
            # Nothing left to retire, but a rotation was completed (the service's record keeps
            # every earlier CA's thumbprint): a retire that stopped before its bundle publish,
            # or a repeated one. Its entry committed with the step; _shared_step publishes.
            if found is not None and found.state.phase is ca_rotation.Phase.NONE and found.previous:
                already = True
                return found
            return await shared_rotation.retire(db, passphrase, audit=audit)

        retired, version = _shared_step(step, *shared)
        state, old_key = retired.state, retired.destroyed
    else:
        data_dir = _data_dir()
        before = ca_rotation.read_state(data_dir)
        if before.phase is ca_rotation.Phase.NONE:
            state, version, old_key, already = before, _finish_retired(before), None, True
        else:
            old_key = CaKeyPlace(data_dir / "tls" / "retiring").token_uri()
            state = ca_rotation.retire(data_dir)
            version = _publish(state, _entry("retire", before, state))
    if already:
        click.echo("the old server CA was already retired; the trust bundle is now up to date")
    click.echo(f"trust bundle    iotdps-server-ca version {version} carries {_describe(state.active)} only")
    if old_key is not None:
        click.echo(f"old CA key      destroyed in the PKCS#11 token ({old_key})")


def _finish_retired(state: RotationState) -> int:
    """One node, no old CA left in the files: the bundle's version once it carries the active
    CA only. A retire that stopped between its files and its bundle publish left the old CA in
    the bundle, and its entry unwritten: both happen now. No bundle at all: no rotation was
    ever done, nothing to retire (InvalidInput)."""
    from iotdps.provisioning.server_ca import BUILTIN_BUNDLE_ID, publish_server_cas
    from iotdps.server.ca_rotation import Phase, RotationState

    async def go(store: Store) -> int | None:
        async with store.begin() as uow:
            bundle = await uow.trust_bundles.get(BUILTIN_BUNDLE_ID, for_update=True)
            if bundle is None:
                return None
            if list(bundle.certificates) != [state.active]:
                old = next((c for c in bundle.certificates if c != state.active), None)
                before = RotationState(Phase.ACTIVATED, state.active, retiring=old)
                bundle = await publish_server_cas(uow, state.trusted)
                facts = {"completed": "an earlier retire stopped before publishing the trust bundle"}
                await uow.audit.append(_entry("retire", before, state, facts))
            return bundle.version

    version = _with_store(go)
    if version is None:
        raise InvalidInput("there is no old server CA to retire: no rotation")
    return version


@tls_group.command("move-to-token")
@click.option(
    "--pkcs11-uri",
    "pkcs11_uri",
    required=True,
    help=f"where the key goes: a free label in the token {PKCS11_HELP}",
)
@store_options
def move_to_token_command(pkcs11_uri: str) -> None:
    """Move the built-in server CA's key file into a PKCS#11 token, once.

    The key is imported sensitive and non-extractable (as `ca-dir move-to-token` does), the
    token's key must sign for tls/server-ca.pem, then its URI is recorded in
    tls/server-ca.pkcs11 and tls/server-ca.key is deleted. Module and PIN: IOTDPS_PKCS11_MODULE,
    IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE. On a shared database the service's record
    then names the token key instead of holding the key; the other nodes follow at their next
    start. Back the key file up first if your policy wants a copy outside the token."""
    from iotdps.pki.custody import token_key_uri
    from iotdps.server import ca_rotation
    from iotdps.server.ca_key import CaKeyPlace, move_file_key_to_token
    from iotdps.server.identity import server_ca_passphrase

    uri = token_key_uri(pkcs11_uri)
    shared = _shared_db()  # a node's data dir on a shared store: only with its --dsn
    data_dir = _data_dir()
    state = ca_rotation.read_state(data_dir)
    if state.phase is not ca_rotation.Phase.NONE:
        raise InvalidInput(
            f"a server CA rotation is {state.phase.value}: "
            "finish it (iotdps tls activate, retire) before moving the key"
        )
    place = CaKeyPlace(data_dir / "tls")
    moved = not (place.custody() == "token" and not place.key_file.exists())
    if not moved:
        recorded = place.token_uri()
        click.echo(f"the server CA key is already in the PKCS#11 token only ({recorded})")
    else:
        recorded = move_file_key_to_token(place, state.active, server_ca_passphrase(data_dir), uri)
        click.echo(f"the server CA key is now in the PKCS#11 token only ({recorded}); {place.key_file} is deleted")
    published = shared is not None and _publish_custody(data_dir)
    if published:
        click.echo("the service's record in the shared database names the token key now (no key there)")
    if moved:
        # The move is files and the token, no transaction to share: the entry follows it at once.
        facts = {"keyCustodyBefore": "file", "keyCustodyAfter": "token", "sharedRecordUpdated": published}
        _record(_entry("move-to-token", state, state, facts))
    click.echo(f"the next start signs through the token ({place.uri_file} names the key)")


def _publish_custody(data_dir: Path) -> bool:
    from iotdps.store.sql.cluster import cluster_db
    from iotdps.wiring.shared_identity import publish_ca_custody

    async def go(store: Store) -> bool:
        db = cluster_db(store)
        return db is not None and await publish_ca_custody(db, data_dir)

    return _with_store(go)


def register(group: click.Group) -> None:
    group.add_command(tls_group)
