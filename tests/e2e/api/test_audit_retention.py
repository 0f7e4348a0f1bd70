"""`[audit] retention_days` on a real `iotdps up`: at start (and daily) the server prunes the
entries older than that, leaving an `audit.pruned` entry by `system:audit-retention`, and the
chain still verifies. A bad value is refused at load with the setting's name."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor, AuditEntry, AuditQuery, verify_chain
from iotdps.config import load_config
from iotdps.errors import ConfigError
from iotdps.provisioning import config_admin
from iotdps.store import open_store
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import start_server

pytestmark = pytest.mark.e2e


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


async def _entries(db: Path) -> list[AuditEntry]:
    store = await open_store(f"sqlite:///{db}")
    try:
        async with store.read() as uow:
            return list(await uow.audit.list(AuditQuery(limit=1000)))
    finally:
        await store.close()


async def _old_changes(db: Path) -> None:
    """Three changes made 400 days ago."""
    store = await open_store(f"sqlite:///{db}", clock=_Clock(datetime.now(UTC) - timedelta(days=400)))
    try:
        for n in range(3):
            await config_admin.link_hub(store, LinkedHub(f"old-{n}.example"), actor=Actor("local", "ops"))
    finally:
        await store.close()


def test_the_server_prunes_to_its_retention_and_the_chain_still_verifies(tmp_path: Path) -> None:
    address = free_loopback_address()
    data_dir = tmp_path / f"data-{address}"
    data_dir.mkdir(parents=True)
    db = data_dir / "iotdps.db"
    asyncio.run(_old_changes(db))
    server = start_server(tmp_path, address=address, config="[audit]\nretention_days = 30\n")
    try:
        deadline = time.monotonic() + 30
        entries = asyncio.run(_entries(db))
        while not any(e.action == "audit.pruned" for e in entries) and time.monotonic() < deadline:
            time.sleep(0.5)
            entries = asyncio.run(_entries(db))
    finally:
        server.stop()
    pruned = [e for e in entries if e.action == "audit.pruned"]
    assert len(pruned) == 1, [(e.seq, e.action) for e in entries]
    assert pruned[0].actor == "system:audit-retention"
    # The three old entries went; the startup's own entries (ID scope, its hub) are new and stay.
    assert (pruned[0].detail_doc()["throughSeq"], pruned[0].detail_doc()["removed"]) == (3, 3)
    assert min(e.seq for e in entries) == 4
    assert {e.actor for e in entries if e.action != "audit.pruned"} == {"system:startup-config"}
    assert verify_chain(entries).problems == ()


def test_a_bad_retention_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[audit]\nretention_days = -1\n")
    with pytest.raises(ConfigError, match=r"audit\.retention_days must be 0 \(keep forever\) or 1\.\.36500"):
        load_config(path, environ={})
    path.write_text('[audit]\nretention_days = "a year"\n')
    with pytest.raises(ConfigError, match=r"audit\.retention_days must be an integer"):
        load_config(path, environ={})
