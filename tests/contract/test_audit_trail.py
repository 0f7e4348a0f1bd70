"""The audit trail in every store: entries written in the change's transaction, listed by
filter, pruned with an anchor; and, in SQLite and PostgreSQL, a row changed, deleted or swapped
behind the service's back is found by `verify` (and by `iotdps audit verify`, exit 1)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor, AuditEntry, AuditQuery, verify_chain
from iotdps.audit.retention import prune
from iotdps.enrollment.models import IndividualEnrollment
from iotdps.errors import PreconditionFailed
from iotdps.ports import Store
from iotdps.provisioning import admin, config_admin
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.settings import ServiceSettings
from iotdps.store import SqlStore, open_store

from .conftest import PG_DSN, open_backend

OWNER = Actor("policy", "provisioningserviceowner")
OPS = Actor("local", "ops")
IOTDPS = str(Path(sys.executable).with_name("iotdps"))  # the console script of this environment


def _sas(registration_id: str) -> IndividualEnrollment:
    return IndividualEnrollment.from_json({"registrationId": registration_id, "attestation": {"type": "symmetricKey"}})


async def _changes(store: Store) -> None:
    """Six audited changes through the core writers."""
    await config_admin.put_settings(store, ServiceSettings("0ne000A0D17"), actor=OPS)
    await config_admin.link_hub(store, LinkedHub("hub-a.example"), actor=OPS)
    saved = await admin.put_enrollment(store, _sas("dev-1"), actor=OWNER)
    await admin.put_enrollment(store, saved.with_status("disabled"), saved.etag, actor=OWNER)
    await admin.put_enrollment(store, _sas("dev-2"), actor=OWNER)
    await admin.delete_enrollment(store, "dev-1", actor=OWNER)


async def _all(store: Store) -> list[AuditEntry]:
    async with store.read() as uow:
        return list(await uow.audit.list(AuditQuery(limit=10_000)))


async def test_changes_are_logged_in_order_with_actor_and_digests(store: Store) -> None:
    await _changes(store)
    entries = await _all(store)
    assert [(e.seq, e.actor, e.action, e.target) for e in entries] == [
        (1, "local:ops", "settings.update", "settings"),
        (2, "local:ops", "hub.link", "hub/hub-a.example"),
        (3, "policy:provisioningserviceowner", "enrollment.create", "enrollment/dev-1"),
        (4, "policy:provisioningserviceowner", "enrollment.update", "enrollment/dev-1"),
        (5, "policy:provisioningserviceowner", "enrollment.create", "enrollment/dev-2"),
        (6, "policy:provisioningserviceowner", "enrollment.delete", "enrollment/dev-1"),
    ]
    create, update, _, delete = entries[2:]
    assert create.before is None and create.after is not None
    assert update.before == create.after and update.after != update.before
    assert delete.before == update.after and delete.after is None
    assert update.detail_doc()["etagBefore"] == create.detail_doc()["etagAfter"]
    assert verify_chain(entries).problems == ()
    # Filters: a dotted prefix, an actor, a target, a time, a page.
    async with store.read() as uow:
        log = uow.audit
        assert [e.seq for e in await log.list(AuditQuery(action="enrollment"))] == [3, 4, 5, 6]
        assert [e.seq for e in await log.list(AuditQuery(action="enrollment.delete"))] == [6]
        assert [e.seq for e in await log.list(AuditQuery(action="enroll"))] == []  # whole words only
        assert [e.seq for e in await log.list(AuditQuery(actor="local:ops"))] == [1, 2]
        assert [e.seq for e in await log.list(AuditQuery(target="enrollment/dev-1"))] == [3, 4, 6]
        assert [e.seq for e in await log.list(AuditQuery(since=entries[4].at))] == [5, 6]
        assert [e.seq for e in await log.list(AuditQuery(after=2, limit=2))] == [3, 4]


async def test_a_refused_change_leaves_no_entry(store: Store) -> None:
    await admin.put_enrollment(store, _sas("dev-1"), actor=OWNER)
    with pytest.raises(PreconditionFailed):
        await admin.put_enrollment(store, _sas("dev-1"), "stale-etag", actor=OWNER)
    with pytest.raises(PreconditionFailed):
        await admin.delete_enrollment(store, "dev-1", "stale-etag", actor=OWNER)
    assert [e.action for e in await _all(store)] == ["enrollment.create"]


async def test_an_append_that_fails_rolls_the_change_back(store: Store) -> None:
    """The change and its entry are one transaction: when the block fails after both were
    written, neither is kept."""
    with pytest.raises(RuntimeError):
        async with store.begin() as uow:
            await uow.hubs.put(LinkedHub("hub-b.example"))
            from iotdps.audit import record

            await record(uow, OPS, "hub.link", "hub/hub-b.example")
            raise RuntimeError("the process died here")
    async with store.read() as uow:
        assert await uow.hubs.get("hub-b.example") is None
    assert await _all(store) == []


async def test_pruning_keeps_the_chain_verifiable(store: Store, backend: str, request: pytest.FixtureRequest) -> None:
    await _changes(store)
    entries = await _all(store)
    # Everything before the fifth entry is "old": prune as of just after the fourth.
    now = entries[3].at + timedelta(microseconds=1) + timedelta(days=30)
    anchor = await prune(store, older_than_days=30, now=now, actor=OPS)
    assert anchor is not None and anchor.action == "audit.pruned"
    assert anchor.detail_doc()["throughSeq"] == 4 and anchor.detail_doc()["removed"] == 4
    kept = await _all(store)
    assert [e.seq for e in kept] == [5, 6, 7]
    assert verify_chain(kept).problems == ()
    # Nothing older left: no entry, no anchor.
    assert await prune(store, older_than_days=30, now=now, actor=OPS) is None
    # The newest entry is never pruned, however old: the next anchor links to it.
    later = await prune(store, older_than_days=1, now=now + timedelta(days=400), actor=OPS)
    assert later is not None
    assert [e.seq for e in await _all(store)] == [7, 8]
    assert verify_chain(await _all(store)).problems == ()


async def test_issuance_configuration_changes_are_logged(store: Store) -> None:
    from iotdps.issuance.admin import delete_trust_bundle, put_trust_bundle
    from iotdps.pki import Validity, create_root_ca, generate_private_key

    key = generate_private_key()
    root = create_root_ca("audit root", key, Validity.days(30))
    await put_trust_bundle(store, "fleet-roots", [root], actor=OWNER)
    await put_trust_bundle(store, "fleet-roots", [root], actor=OWNER)
    await delete_trust_bundle(store, "fleet-roots", actor=OPS)
    entries = await _all(store)
    assert [(e.action, e.target, e.actor) for e in entries] == [
        ("trust-bundle.create", "trust-bundle/fleet-roots", "policy:provisioningserviceowner"),
        ("trust-bundle.update", "trust-bundle/fleet-roots", "policy:provisioningserviceowner"),
        ("trust-bundle.delete", "trust-bundle/fleet-roots", "local:ops"),
    ]
    assert entries[1].before == entries[0].after and entries[2].after is None
    assert verify_chain(entries).problems == ()


# --------------------------------------------------------------------------- tampering, in SQL


def _sqlite_tamper(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    try:
        with db:
            for statement in statements:
                db.execute(statement)
    finally:
        db.close()


async def _pg_tamper(store: SqlStore, *statements: str) -> None:
    async with store.engine.begin() as conn:  # type: ignore[union-attr]
        for statement in statements:
            await conn.execute(text(statement))


# Swapping two rows: their seq values change places (through a free number, as the primary key
# is checked row by row).
_SWAP = (
    "UPDATE audit_log SET seq = -1 WHERE seq = 3",
    "UPDATE audit_log SET seq = 3 WHERE seq = 4",
    "UPDATE audit_log SET seq = 4 WHERE seq = -1",
)
TAMPERING = {
    "update a column": (("UPDATE audit_log SET actor = 'local:nobody' WHERE seq = 3",), {("changed", 3)}),
    "update the digest": (("UPDATE audit_log SET after = NULL WHERE seq = 4",), {("changed", 4)}),
    "delete a row": (("DELETE FROM audit_log WHERE seq = 4",), {("deleted", 4)}),
    "delete the oldest": (("DELETE FROM audit_log WHERE seq = 1",), {("deleted", 2)}),
    "swap two rows": (_SWAP, {("reordered", 3), ("reordered", 4), ("reordered", 5)}),
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("pg_schema")  # resolved outside the test's event loop
    return str(request.param)


@pytest.mark.parametrize("case", sorted(TAMPERING))
async def test_tampering_with_a_row_is_detected(
    engine: str, case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    statements, expected = TAMPERING[case]
    store = await open_backend(engine, request, tmp_path)
    try:
        await _changes(store)
        assert verify_chain(await _all(store)).problems == ()
        if engine == "sqlite":
            _sqlite_tamper(tmp_path / "contract.db", *statements)
        else:
            assert isinstance(store, SqlStore)
            schema = request.getfixturevalue("pg_schema")
            await _pg_tamper(store, f'SET LOCAL search_path TO "{schema}"', *statements)
        found = verify_chain(await _all(store)).problems
        assert {(p.kind, p.seq) for p in found} == expected, [str(p) for p in found]
    finally:
        await store.close()


def test_the_cli_says_which_entry_was_tampered_with(tmp_path: Path) -> None:
    async def fill() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'cli.db'}")
        try:
            await _changes(store)
        finally:
            await store.close()

    asyncio.run(fill())
    dsn = f"sqlite:///{tmp_path / 'cli.db'}"

    def verify() -> subprocess.CompletedProcess[str]:
        cmd = [IOTDPS, "audit", "verify", "--dsn", dsn]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    good = verify()
    assert good.returncode == 0, good.stderr
    assert "audit trail intact: 6 entries, head 6" in good.stdout
    head = good.stdout.split()[-1]
    _sqlite_tamper(tmp_path / "cli.db", "UPDATE audit_log SET target = 'enrollment/other' WHERE seq = 5")
    bad = verify()
    assert bad.returncode == 1
    assert "changed: entry 5 was changed" in bad.stdout
    assert "NOT intact" in bad.stderr
    # Cutting off the newest entries is only visible against a head noted earlier.
    _sqlite_tamper(tmp_path / "cli.db", "UPDATE audit_log SET target = 'enrollment/dev-2' WHERE seq = 5")
    assert verify().returncode == 0
    _sqlite_tamper(tmp_path / "cli.db", "DELETE FROM audit_log WHERE seq = 6")
    assert verify().returncode == 0  # a chain cannot see its own tail go
    cmd = [IOTDPS, "audit", "verify", "--dsn", dsn, "--head", head]
    cut = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert cut.returncode == 1 and "no longer in the log" in cut.stdout


# --------------------------------------------------------------------------- concurrency


@pytest.mark.postgres
async def test_two_writers_do_not_fork_the_chain(
    pg_schema: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two stores (two nodes' connection pools) appending at once: every entry links to the one
    before it, with no seq taken twice and none skipped. Registration deletes, because they
    touch no configuration table: a configuration write serialises on config_version's row
    anyway, so only the chain's own lock keeps these apart."""
    schema = pg_schema
    first = await open_backend("postgresql", request, tmp_path)
    second = await open_store(PG_DSN, schema=schema)
    try:
        names = [f"w{n}-{i}" for n in range(4) for i in range(15)]
        async with first.begin() as uow:
            for name in names:
                await uow.registrations.put(RegistrationRecord(name, "assigning", f"op-{name}"))

        async def writer(store: Store, n: int) -> None:
            for i in range(15):
                await admin.delete_registration(store, f"w{n}-{i}", actor=Actor("policy", f"w{n}"))

        await asyncio.gather(*(writer(s, n) for n, s in enumerate((first, second, first, second))))
        entries = await _all(first)
        assert [e.seq for e in entries] == list(range(1, 61))
        assert sorted(e.target for e in entries) == sorted(f"registration/{name}" for name in names)
        assert verify_chain(entries).problems == ()
    finally:
        await second.close()
        await first.close()


def test_the_memory_store_keeps_the_same_chain() -> None:
    async def go() -> list[AuditEntry]:
        store = await open_store("memory://")
        try:
            await _changes(store)
            return await _all(store)
        finally:
            await store.close()

    entries = asyncio.run(go())
    assert len(entries) == 6 and verify_chain(entries).problems == ()
