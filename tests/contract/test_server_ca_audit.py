"""The server CA's steps (`iotdps tls rotate / activate / retire / move-to-token`) in the audit
trail: one entry per step, by `local:<user>`, with the CAs' thumbprints before and after and no
key or passphrase; on one node (the data dir's SQLite) and on a shared PostgreSQL store. And a
repeated `retire` (after a crash before its bundle publish, or after it completed) finishes the
job with exit 0, while a retire with no rotation ever done is still refused (exit 2)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from iotdps.audit import AuditEntry, AuditQuery, verify_chain
from iotdps.cli.actor import local_actor
from iotdps.issuance.builtin import BUILTIN_BUNDLE_ID
from iotdps.paths import default_dsn
from iotdps.pki.encoding import sha256_thumbprint
from iotdps.server import ca_rotation
from iotdps.server.identity import ensure_server_identity
from iotdps.store import open_store
from iotdps.store.sql.cluster import cluster_db
from iotdps.wiring import shared_rotation
from iotdps_testing.cluster import pg_database
from iotdps_testing.token_cli import TokenCli, start_token_cli

PASSPHRASE = "server ca audit test passphrase"
ENV = {"IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE}
IOTDPS = str(Path(sys.executable).with_name("iotdps"))  # the console script of this environment


def _tp(cert: x509.Certificate) -> str:
    return sha256_thumbprint(cert)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IOTDPS, *args], env={**_clean_env(), **ENV, **(env or {})}, capture_output=True, text=True, check=False
    )


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}


async def _read(dsn: str) -> tuple[list[AuditEntry], list[x509.Certificate]]:
    """The whole audit trail, and the built-in bundle's CAs."""
    store = await open_store(dsn)
    try:
        async with store.read() as uow:
            entries = list(await uow.audit.list(AuditQuery(limit=10_000)))
            bundle = await uow.trust_bundles.get(BUILTIN_BUNDLE_ID)
    finally:
        await store.close()
    return entries, list(bundle.certificates) if bundle is not None else []


def _steps(entries: list[AuditEntry]) -> list[tuple[str, str, str, Any]]:
    return [(e.actor, e.action, e.target, e.detail_doc()) for e in entries if e.action.startswith("server-ca.")]


def _no_secret(entries: list[AuditEntry]) -> None:
    for entry in entries:
        text = entry.detail + entry.target
        assert PASSPHRASE not in text and "PRIVATE KEY" not in text and "BEGIN" not in text


def _check_steps(entries: list[AuditEntry], old: x509.Certificate, new: x509.Certificate, *, force: bool) -> None:
    me = str(local_actor())
    steps = _steps(entries)
    assert [(s[0], s[1], s[2]) for s in steps] == [
        (me, "server-ca.rotate", "server-ca"),
        (me, "server-ca.activate", "server-ca"),
        (me, "server-ca.retire", "server-ca"),
    ]
    rotate, activate, retire = (s[3] for s in steps)
    assert rotate["presentedCaBefore"] == rotate["presentedCaAfter"] == _tp(old)
    assert rotate["trustedCasBefore"] == [_tp(old)] and rotate["trustedCasAfter"] == [_tp(old), _tp(new)]
    assert rotate["phase"] == "pending"
    assert activate["presentedCaBefore"] == _tp(old) and activate["presentedCaAfter"] == _tp(new)
    assert activate["trustedCasBefore"] == [_tp(old), _tp(new)] == activate["trustedCasAfter"]
    assert activate["force"] is force and activate["devicesWithoutNewCa"] == 0
    assert retire["presentedCaBefore"] == retire["presentedCaAfter"] == _tp(new)
    assert retire["trustedCasBefore"] == [_tp(old), _tp(new)] and retire["trustedCasAfter"] == [_tp(new)]
    assert retire["phase"] == "none"
    _no_secret(entries)
    assert verify_chain(entries).problems == ()


def test_single_node_steps_are_audited_and_a_repeated_retire_finishes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ensure_server_identity(data_dir, ["localhost"], ENV)
    at = ["--data-dir", str(data_dir)]
    old = ca_rotation.read_state(data_dir).active

    refused = _cli("tls", "retire", *at)  # no rotation ever done: nothing to retire
    assert refused.returncode == 2 and "no old server CA to retire: no rotation" in refused.stderr
    assert "Traceback" not in refused.stderr

    assert _cli("tls", "rotate", *at).returncode == 0
    new = ca_rotation.read_state(data_dir).next
    assert new is not None
    done = _cli("tls", "activate", "--force", *at)
    assert done.returncode == 0, done.stderr
    # Crash between retire's file step and its bundle publish: the files say retired, the
    # bundle still lists the old CA, and no entry was written.
    ca_rotation.retire(data_dir)
    entries, bundle = asyncio.run(_read(default_dsn(data_dir)))
    assert bundle == [old, new] and [s[1] for s in _steps(entries)] == ["server-ca.rotate", "server-ca.activate"]

    finished = _cli("tls", "retire", *at)
    assert finished.returncode == 0, finished.stderr
    assert "the old server CA was already retired; the trust bundle is now up to date" in finished.stdout
    entries, bundle = asyncio.run(_read(default_dsn(data_dir)))
    assert bundle == [new]
    _check_steps(entries, old, new, force=True)
    assert "completed" in _steps(entries)[-1][3]

    again = _cli("tls", "retire", *at)  # completed already: says so, changes nothing
    assert again.returncode == 0 and "already retired" in again.stdout, again.stderr
    assert asyncio.run(_read(default_dsn(data_dir)))[0] == entries

    listed = _cli("audit", "list", "--action", "server-ca", *at)
    assert listed.returncode == 0, listed.stderr
    for action in ("server-ca.rotate", "server-ca.activate", "server-ca.retire"):
        assert action in listed.stdout
    verified = _cli("audit", "verify", *at)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_uninterrupted_single_node_retire_is_audited(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ensure_server_identity(data_dir, ["localhost"], ENV)
    at = ["--data-dir", str(data_dir)]
    old = ca_rotation.read_state(data_dir).active
    for step in (["rotate"], ["activate"], ["retire"]):
        done = _cli("tls", *step, *at)
        assert done.returncode == 0, done.stderr
        assert "already retired" not in done.stdout
    new = ca_rotation.read_state(data_dir).active
    entries, bundle = asyncio.run(_read(default_dsn(data_dir)))
    assert bundle == [new]
    _check_steps(entries, old, new, force=False)
    assert "completed" not in _steps(entries)[-1][3]


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


async def _join(dsn: str, node: Path) -> None:
    store = await open_store(dsn)
    try:
        db = cluster_db(store)
        assert db is not None
        await shared_rotation.join(db, node, ["n.example.test"], ENV)
    finally:
        await store.close()


@pytest.mark.postgres
def test_shared_steps_are_audited_in_their_transaction(tmp_path: Path, pg_dsn: str) -> None:
    node = tmp_path / "n"
    asyncio.run(_join(pg_dsn, node))
    at = ["--dsn", pg_dsn, "--data-dir", str(node)]
    old = ca_rotation.read_state(node).active

    refused = _cli("tls", "retire", *at)  # the service never rotated: nothing to retire
    assert refused.returncode == 2 and "no old server CA to retire" in refused.stderr

    assert _cli("tls", "rotate", *at).returncode == 0
    new = ca_rotation.read_state(node).next
    assert new is not None
    for step in (["activate", "--force"], ["retire"]):
        done = _cli("tls", *step, *at)
        assert done.returncode == 0, done.stderr
    again = _cli("tls", "retire", *at)
    assert again.returncode == 0 and "already retired" in again.stdout, again.stderr
    entries, bundle = asyncio.run(_read(pg_dsn))
    assert bundle == [new]
    _check_steps(entries, old, new, force=True)  # the repeated retire wrote nothing more

    listed = _cli("audit", "list", "--action", "server-ca", "--dsn", pg_dsn)
    assert listed.returncode == 0 and "server-ca.retire" in listed.stdout, listed.stderr
    verified = _cli("audit", "verify", "--dsn", pg_dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    return start_token_cli(tmp_path_factory.mktemp("audit-hsm"), label="audit-hsm", user_pin="audit-pin-1357")


@pytest.mark.timeout(300)
def test_move_to_token_is_audited(hsm: TokenCli, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ensure_server_identity(data_dir, ["localhost"], ENV)
    ca = ca_rotation.read_state(data_dir).active
    moved = hsm.run(
        "tls", "move-to-token", "--pkcs11-uri", "pkcs11:object=audit-ca", IOTDPS_DATA_DIR=str(data_dir), **ENV
    )
    assert moved.returncode == 0, moved.stderr
    again = hsm.run(
        "tls", "move-to-token", "--pkcs11-uri", "pkcs11:object=audit-ca", IOTDPS_DATA_DIR=str(data_dir), **ENV
    )
    assert again.returncode == 0 and "already in the PKCS#11 token" in again.stdout, again.stderr
    entries, _ = asyncio.run(_read(default_dsn(data_dir)))
    steps = _steps(entries)
    assert len(steps) == 1  # the repeat moved nothing
    actor, action, target, detail = steps[0]
    assert action == "server-ca.move-to-token" and target == "server-ca" and actor.startswith("local:")
    assert detail["presentedCaBefore"] == detail["presentedCaAfter"] == _tp(ca)
    assert detail["keyCustodyBefore"] == "file" and detail["keyCustodyAfter"] == "token"
    assert detail["sharedRecordUpdated"] is False
    text = entries[0].detail
    assert "audit-pin-1357" not in text and PASSPHRASE not in text
    assert verify_chain(entries).problems == ()
