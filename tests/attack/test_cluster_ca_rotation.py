"""A server CA rotation on a shared store (wiring/shared_rotation.py): the ways around it.

- A node's data dir rotated on its own (`iotdps tls` without the shared DSN) would present a CA
  no other node knows: refused, nothing written.
- The rotation record in the database is sealed: a value copied from another record, or
  damaged, is refused in words; the node's files stay as they were.
- Neither record holds a CA key in the clear, during any step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.cli.main import main
from iotdps.errors import ConfigError
from iotdps.secret import Secret
from iotdps.server import ca_rotation
from iotdps.server.ca_rotation import Phase
from iotdps.store import open_store
from iotdps.store.sql.cluster import ClusterDb, cluster_db
from iotdps.wiring import shared_rotation
from iotdps.wiring.shared_identity import POLICIES_SECRET, SERVER_CA_SECRET
from iotdps_testing.cluster import pg_database

pytestmark = pytest.mark.postgres

PASSPHRASE = "attack rotation passphrase"
ENV = {"IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE}


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


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), capsys.readouterr().err


async def test_a_node_data_dir_is_not_rotated_alone(
    tmp_path: Path, db: ClusterDb, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tmp_path / "node"
    await shared_rotation.join(db, node, ["node.example.test"], ENV)
    monkeypatch.setenv("IOTDPS_SERVER_CA_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("IOTDPS_DSN", raising=False)
    for args in (("rotate",), ("activate", "--force"), ("retire",), ("rotation", "status")):
        code, err = await asyncio.to_thread(_run, capsys, "tls", *args, "--data-dir", str(node))
        assert code == 2
        assert err == (
            f"error: {node} is the data dir of a node on a shared database: pass that database's DSN "
            "(--dsn or IOTDPS_DSN), so that the rotation is the whole service's\n"
        )
    assert not (node / "tls" / "next").exists() and not (node / "iotdps.db").exists()
    shared = await shared_rotation.read_shared(db, Secret(PASSPHRASE))
    assert shared is not None and shared.state.phase is Phase.NONE


@pytest.mark.parametrize("forgery", ["copied", "damaged"])
async def test_a_forged_rotation_record_is_refused(
    tmp_path: Path, db: ClusterDb, dsn: str, forgery: str, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    await shared_rotation.join(db, node, ["node.example.test"], ENV)
    before = {p.name: p.read_bytes() for p in (node / "tls").iterdir() if p.is_file()}
    sealed_ca = await db.get_secret(SERVER_CA_SECRET)
    assert sealed_ca is not None
    # Someone with write access to the database, not the passphrase: another record's sealed
    # value under the rotation's name (sealing binds the name), or bytes that are no seal.
    value = await db.get_secret(POLICIES_SECRET) if forgery == "copied" else "v1.AAAA" + "A" * 60
    assert value is not None
    expected: dict[str, str | None] = {shared_rotation.ROTATION_SECRET: None}
    assert await db.swap_secrets(SERVER_CA_SECRET, expected, {shared_rotation.ROTATION_SECRET: value})
    with pytest.raises(ConfigError, match=f"the shared secret '{shared_rotation.ROTATION_SECRET}' in the database"):
        await shared_rotation.follow(db, node, ENV)
    follower = shared_rotation.RotationFollower(db, node, ENV)
    with pytest.raises(ConfigError):
        await follower.poll()
    assert await follower.poll() is False  # tried again at every poll, reported the first time only
    assert {p.name: p.read_bytes() for p in (node / "tls").iterdir() if p.is_file()} == before
    assert ca_rotation.read_state(node).phase is Phase.NONE
    with pytest.raises(ConfigError):  # and no operator step builds on it
        await shared_rotation.rotate(db, Secret(PASSPHRASE))


async def test_no_ca_key_in_the_clear_at_any_step(tmp_path: Path, db: ClusterDb, dsn: str) -> None:
    await shared_rotation.join(db, tmp_path / "node", ["node.example.test"], ENV)
    secret = Secret(PASSPHRASE)
    for step in (shared_rotation.rotate, shared_rotation.activate, shared_rotation.retire):
        await step(db, secret)
        engine = create_async_engine(dsn)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT name, value FROM service_secrets"))).all()
        finally:
            await engine.dispose()
        assert shared_rotation.ROTATION_SECRET in {r[0] for r in rows}
        assert all(r[1].startswith("v1.") and "PRIVATE KEY" not in r[1] and "CERTIFICATE" not in r[1] for r in rows)


async def test_another_services_data_dir_is_not_overwritten(
    tmp_path: Path, db: ClusterDb, dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`iotdps tls rotate --dsn` with a data dir (or the default one) of another service: refused
    before the database changes, so that service's identity is neither overwritten nor half-rotated."""
    from iotdps.server.identity import ensure_server_identity

    await shared_rotation.join(db, tmp_path / "node", ["node.example.test"], ENV)
    stranger = tmp_path / "stranger"
    ensure_server_identity(stranger, ["s.example.test"], ENV)
    before = {p.name: p.read_bytes() for p in (stranger / "tls").iterdir() if p.is_file()}
    monkeypatch.setenv("IOTDPS_SERVER_CA_PASSPHRASE", PASSPHRASE)
    code, err = await asyncio.to_thread(_run, capsys, "tls", "rotate", "--dsn", dsn, "--data-dir", str(stranger))
    assert code == 2
    assert err == (
        "error: invalid configuration:\n"
        f"  - {stranger / 'tls' / 'server-ca.pem'} is not the server CA of the service in the database, nor one it "
        "rotated away from: this data dir belongs to another service\n"
    )
    assert {p.name: p.read_bytes() for p in (stranger / "tls").iterdir() if p.is_file()} == before
    shared = await shared_rotation.read_shared(db, Secret(PASSPHRASE))
    assert shared is not None and shared.state.phase is Phase.NONE
