"""A server CA rotation on a shared (PostgreSQL) store: decided in the database, followed by
every node's data dir (wiring/shared_rotation.py), in-process on a database of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from iotdps.errors import ConfigError, InvalidInput
from iotdps.pki import load_certificates
from iotdps.secret import Secret
from iotdps.server import ca_rotation
from iotdps.server.ca_rotation import Phase
from iotdps.store import open_store
from iotdps.store.sql.cluster import ClusterDb, cluster_db
from iotdps.wiring import shared_rotation
from iotdps_testing.cluster import pg_database

pytestmark = pytest.mark.postgres

PASSPHRASE = "shared rotation test passphrase"
ENV = {"IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE}
SECRET = Secret(PASSPHRASE)


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[ClusterDb]:
    store = await open_store(dsn)
    try:
        shared = cluster_db(store)
        assert shared is not None
        yield shared
    finally:
        await store.close()


def _cert(path: Path) -> x509.Certificate:
    return load_certificates(path.read_bytes())[0]


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))}


def _bundle(data_dir: Path) -> list[x509.Certificate]:
    return load_certificates((data_dir / "tls" / "ca-bundle.pem").read_bytes())


async def test_every_data_dir_follows_the_database(tmp_path: Path, db: ClusterDb) -> None:
    nodes = {tmp_path / "a": ["a.example.test", "127.0.0.21"], tmp_path / "b": ["b.example.test"]}
    for data_dir, names in nodes.items():
        await shared_rotation.join(db, data_dir, names, ENV)
    behind = tmp_path / "behind"  # joined before the rotation, down through all of it
    await shared_rotation.join(db, behind, ["behind.example.test"], ENV)
    old = _cert(tmp_path / "a" / "tls" / "server-ca.pem")

    rotated = await shared_rotation.rotate(db, SECRET)
    assert rotated.next is not None and rotated.active == old
    with pytest.raises(InvalidInput, match="already pending"):
        await shared_rotation.rotate(db, SECRET)
    follower = shared_rotation.RotationFollower(db, tmp_path / "b", ENV)
    assert await follower.poll() is True  # the first look applies what it finds
    assert await follower.poll() is False  # nothing changed since
    await shared_rotation.follow(db, tmp_path / "a", ENV)
    for data_dir in nodes:
        state = ca_rotation.read_state(data_dir)
        assert state.phase is Phase.PENDING and state.next == rotated.next and state.active == old
        assert _bundle(data_dir) == [old, rotated.next]
        assert _cert(data_dir / "tls" / "server.pem").issuer == old.subject  # nothing presented changed

    activated = await shared_rotation.activate(db, SECRET)
    assert activated.active == rotated.next and activated.retiring == old
    assert await shared_rotation.activate(db, SECRET) == activated  # repeated: nothing to do
    assert await follower.poll() is True
    await shared_rotation.follow(db, tmp_path / "a", ENV)
    for data_dir, names in nodes.items():
        state = ca_rotation.read_state(data_dir)
        assert state.phase is Phase.ACTIVATED and state.active == activated.active and state.retiring == old
        leaf = _cert(data_dir / "tls" / "server.pem")
        # Each node's own certificate, for its own names, from the new CA.
        assert leaf.issuer == activated.active.subject and _sans(leaf) == set(names)
        assert not (data_dir / "tls" / "next").exists()
        assert _bundle(data_dir) == [old, activated.active]

    retired = await shared_rotation.retire(db, SECRET)
    assert retired.state.phase is Phase.NONE and retired.active == activated.active
    with pytest.raises(InvalidInput, match="no old server CA to retire"):
        await shared_rotation.retire(db, SECRET)
    assert await follower.poll() is True
    state = ca_rotation.read_state(tmp_path / "b")
    assert state.phase is Phase.NONE and _bundle(tmp_path / "b") == [activated.active]
    assert not (tmp_path / "b" / "tls" / "retiring").exists()

    # The node that was down all along: its CA is one the service rotated away from, so it
    # catches up at its start (instead of being refused as another service's data dir).
    await shared_rotation.join(db, behind, ["behind.example.test"], ENV)
    assert _cert(behind / "tls" / "server-ca.pem") == activated.active
    leaf = _cert(behind / "tls" / "server.pem")
    assert leaf.issuer == activated.active.subject and _sans(leaf) == {"behind.example.test"}
    assert ca_rotation.read_state(behind).phase is Phase.NONE and _bundle(behind) == [activated.active]
    # A node started fresh mid-rotation learns both CAs.
    await shared_rotation.rotate(db, SECRET)
    late = tmp_path / "late"
    await shared_rotation.join(db, late, ["late.example.test"], ENV)
    assert ca_rotation.read_state(late).phase is Phase.PENDING and len(_bundle(late)) == 2


async def test_an_interrupted_local_activation_completes(tmp_path: Path, db: ClusterDb) -> None:
    node = tmp_path / "n"
    await shared_rotation.join(db, node, ["n.example.test"], ENV)
    old = _cert(node / "tls" / "server-ca.pem")
    await shared_rotation.rotate(db, SECRET)
    await shared_rotation.follow(db, node, ENV)
    activated = await shared_rotation.activate(db, SECRET)
    # The node stopped inside its own activation: the old CA kept aside, nothing switched yet.
    (node / "tls" / "retiring").mkdir()
    (node / "tls" / "retiring" / "server-ca.pem").write_bytes((node / "tls" / "server-ca.pem").read_bytes())
    (node / "tls" / "next" / "server-ca.pem").unlink()  # and a half-written next/ as well
    await shared_rotation.follow(db, node, ENV)
    state = ca_rotation.read_state(node)
    assert state.phase is Phase.ACTIVATED and state.active == activated.active and state.retiring == old
    assert _cert(node / "tls" / "server.pem").issuer == activated.active.subject


async def test_two_operators_cannot_interleave(tmp_path: Path, db: ClusterDb) -> None:
    await shared_rotation.join(db, tmp_path / "n", ["n.example.test"], ENV)
    results = await asyncio.gather(
        shared_rotation.rotate(db, SECRET), shared_rotation.rotate(db, SECRET), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, shared_rotation.SharedCa)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], InvalidInput), results
    current = await shared_rotation.read_shared(db, SECRET)
    assert current is not None and current.next == won[0].next


async def test_other_passphrases_and_other_services_are_refused(tmp_path: Path, db: ClusterDb) -> None:
    await shared_rotation.join(db, tmp_path / "n", ["n.example.test"], ENV)
    with pytest.raises(ConfigError, match="does not open"):
        await shared_rotation.rotate(db, Secret("another passphrase"))
    current = await shared_rotation.read_shared(db, SECRET)
    assert current is not None and current.state.phase is Phase.NONE  # nothing was written
    await shared_rotation.rotate(db, SECRET)
    with pytest.raises(ConfigError, match="does not open"):
        await shared_rotation.follow(db, tmp_path / "n", {"IOTDPS_SERVER_CA_PASSPHRASE": "another passphrase"})
    assert ca_rotation.read_state(tmp_path / "n").phase is Phase.NONE  # nothing adopted
    # A data dir of another service (its own CA, never this service's) is not adopted.
    from iotdps.server.identity import ensure_server_identity

    stranger = tmp_path / "stranger"
    ensure_server_identity(stranger, ["s.example.test"], ENV)
    with pytest.raises(ConfigError, match="nor one it rotated away from"):
        await shared_rotation.follow(db, stranger, ENV)
    assert ca_rotation.read_state(stranger).phase is Phase.NONE


async def test_the_node_and_the_cli_apply_a_step_at_the_same_moment(tmp_path: Path, db: ClusterDb) -> None:
    node = tmp_path / "n"
    await shared_rotation.join(db, node, ["n.example.test"], ENV)
    await shared_rotation.rotate(db, SECRET)
    await shared_rotation.follow(db, node, ENV)
    activated = await shared_rotation.activate(db, SECRET)
    # The running node's follower and `iotdps tls activate` on its data dir: one after the other.
    results = await asyncio.gather(*(asyncio.to_thread(shared_rotation.apply, node, activated, ENV) for _ in range(4)))
    assert all(r is not None and r.phase is Phase.ACTIVATED and r.active == activated.active for r in results)
    assert _cert(node / "tls" / "server.pem").issuer == activated.active.subject


async def test_a_behind_data_dir_without_a_server_certificate_starts_fresh(tmp_path: Path, db: ClusterDb) -> None:
    node = tmp_path / "n"
    await shared_rotation.join(db, node, ["n.example.test"], ENV)
    await shared_rotation.rotate(db, SECRET)
    activated = await shared_rotation.activate(db, SECRET)
    (node / "tls" / "server.pem").unlink()  # the old CA's, and nothing it presents
    await shared_rotation.join(db, node, ["n.example.test"], ENV)
    assert _cert(node / "tls" / "server-ca.pem") == activated.active
    leaf = _cert(node / "tls" / "server.pem")
    assert leaf.issuer == activated.active.subject and _sans(leaf) == {"n.example.test"}
    assert ca_rotation.read_state(node).phase is Phase.ACTIVATED  # the retiring CA learnt after joining


async def test_a_step_that_stopped_before_the_bundle_completes_when_run_again(
    tmp_path: Path, db: ClusterDb, dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotdps.cli.main import main
    from iotdps.issuance.builtin import BUILTIN_BUNDLE_ID

    node = tmp_path / "n"
    await shared_rotation.join(db, node, ["n.example.test"], ENV)
    monkeypatch.setenv("IOTDPS_SERVER_CA_PASSPHRASE", PASSPHRASE)

    def cli(*args: str) -> tuple[int, str]:
        try:
            main(["tls", *args, "--dsn", dsn, "--data-dir", str(node)])
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().out

    async def bundle() -> list[x509.Certificate]:
        store = await open_store(dsn)
        try:
            async with store.read() as uow:
                found = await uow.trust_bundles.get(BUILTIN_BUNDLE_ID)
        finally:
            await store.close()
        return list(found.certificates) if found is not None else []

    # The CLI stopped right after the database step (as if killed): no bundle, no files yet.
    rotated = await shared_rotation.rotate(db, SECRET)
    assert await bundle() == []
    code, err = await asyncio.to_thread(cli, "rotate")
    assert code == 2 and "already pending" in err
    assert await bundle() == [rotated.active, rotated.next]
    activated = await shared_rotation.activate(db, SECRET)
    code, out = await asyncio.to_thread(cli, "activate")  # repeated: completes, nothing refused
    assert code == 0 and "every node issues its own" in out
    assert await bundle() == [rotated.active, activated.active]
    assert _cert(node / "tls" / "server.pem").issuer == activated.active.subject
    await shared_rotation.retire(db, SECRET)
    code, out = await asyncio.to_thread(cli, "retire")  # nothing left to retire: the job finishes
    assert code == 0 and "the old server CA was already retired; the trust bundle is now up to date" in out
    assert await bundle() == [activated.active]
