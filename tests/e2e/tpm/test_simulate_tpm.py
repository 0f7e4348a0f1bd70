"""`iotdps simulate --attestation tpm` against a real `iotdps up`: a handful of swtpm
processes, one individual enrollment per TPM, HTTPS registrations, then telemetry with hub
tokens signed in each TPM. The store is read to check that what the simulator reported happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from iotdps_testing.server import SRC, RunningServer, start_server
from iotdps_testing.swtpm import require_binaries

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_binaries()  # fails (never skips) without swtpm
    running = start_server(tmp_path_factory.mktemp("simulate-tpm"))
    yield running
    assert running.stop() == 0, running.log()


def simulate(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(server.data_dir)}
    argv = [sys.executable, "-m", "iotdps", "simulate", "--dps-host", server.address, "--json", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=150, check=False)


def records_and_telemetry(server: RunningServer, prefix: str, n: int) -> tuple[list[Any], dict[str, int]]:
    from iotdps.ports import HubStore
    from iotdps.store import open_store

    async def read() -> tuple[list[Any], dict[str, int]]:
        store = cast(HubStore, await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False))
        try:
            records, counts = [], {}
            async with store.begin() as uow:
                for i in range(n):
                    record = await uow.registrations.get(f"{prefix}-{i:06d}")
                    records.append(record)
                    if record is not None and record.assigned_hub:
                        page = await uow.telemetry.list(record.assigned_hub, record.device_id, limit=1000)
                        counts[record.registration_id] = len(page)
            return records, counts
        finally:
            await store.close()

    return asyncio.run(read())


def swtpm_processes_under(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("swtpm") and str(path) in cmdline:
            found.append(int(entry.name))
    return found


def test_simulate_tpm_registers_over_https_and_sends_telemetry(server: RunningServer, tmp_path: Path) -> None:
    work = tmp_path / "work"
    done = simulate(
        server, "--devices", "3", "--attestation", "tpm", "--concurrency", "3", "--work-dir", str(work),
        "--then-telemetry", "0", "--duration", "0.5", "--window", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    reg = doc["registration"]
    assert (reg["attempted"], reg["succeeded"], reg["failed"], reg["errors"]) == (3, 3, 0, {})
    assert doc["hubs"] == {server.address: 3}
    tele = doc["telemetry"]
    assert (tele["connected"], tele["connect_errors"], tele["errors"]) == (3, {}, {})
    assert tele["acknowledged"] > 0
    records, counts = records_and_telemetry(server, doc["fleet"]["prefix"], 3)
    assert [(r.status, r.attestation_type, r.enrollment_group_id) for r in records] == [("assigned", "tpm", None)] * 3
    assert len(counts) == 3 and all(n > 0 for n in counts.values())
    # Three distinct TPMs: three distinct enrollments, each with its own EK.
    eks = {
        server.cli_json("enrollment", "show", r.registration_id)["attestation"]["tpm"]["endorsementKey"]
        for r in records
    }
    assert len(eks) == 3
    assert swtpm_processes_under(work) == []  # every swtpm it started is stopped


def test_simulate_tpm_refuses_more_than_a_handful(server: RunningServer) -> None:
    done = simulate(server, "--devices", "33", "--attestation", "tpm")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --attestation tpm runs one swtpm per device: at most 32 devices"
    ]
