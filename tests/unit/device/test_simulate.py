"""`iotdps simulate` against a real `iotdps up`: both attestations, then telemetry.

The simulator runs as a user runs it (a subprocess, `python -m iotdps simulate`) on the
server's data dir; the store is then read directly to check that what it reported happened.
No timing is asserted: only counts.
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

from iotdps.device.mqtt import ConnectRefused
from iotdps.device.provision import ProvisioningFailed
from iotdps.device.simulate import PhaseStats, error_kind
from iotdps_testing.server import RunningServer, start_server

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("simulate"))
    yield running
    running.stop()


def simulate(server: RunningServer, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(server.data_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "simulate", "--dps-host", server.address, "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def store_view(server: RunningServer, prefix: str, n: int) -> tuple[list[Any], dict[str, int]]:
    """The registration records of the run's devices and their stored telemetry counts."""
    from iotdps.ports import HubStore
    from iotdps.store import open_store

    async def read() -> tuple[list[Any], dict[str, int]]:
        # Every store of ours implements the hub repositories too.
        store = cast(HubStore, await open_store(f"sqlite:///{server.data_dir / 'iotdps.db'}", create=False))
        try:
            records, counts = [], {}
            async with store.begin() as uow:
                for i in range(n):
                    record = await uow.registrations.get(f"{prefix}-{i:06d}")
                    records.append(record)
                    if record is None or not record.assigned_hub:
                        continue
                    total, after = 0, None
                    for _ in range(1000):  # pages of 1000; bounded
                        page = await uow.telemetry.list(record.assigned_hub, record.device_id, after=after, limit=1000)
                        total += len(page)
                        if len(page) < 1000:
                            break
                        after = page[-1].seq
                    counts[record.registration_id] = total
            return records, counts
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.parametrize("attestation", ["x509", "symmetric-key"])
def test_registers_every_device_through_the_dps_endpoint(server: RunningServer, attestation: str) -> None:
    doc = simulate(server, "--devices", "5", "--attestation", attestation, "--concurrency", "3")
    reg = doc["registration"]
    assert (reg["attempted"], reg["succeeded"], reg["failed"], reg["errors"]) == (5, 5, 0, {})
    assert reg["per_second"] > 0 and reg["p99_ms"] >= reg["p50_ms"] > 0
    assert doc["hubs"] == {server.address: 5}
    assert doc["telemetry"] is None
    fleet = doc["fleet"]
    assert fleet["attestation"] == attestation
    records, _ = store_view(server, fleet["prefix"], 5)
    assert [r.status for r in records] == ["assigned"] * 5
    expected = "x509" if attestation == "x509" else "symmetricKey"
    assert {r.attestation_type for r in records} == {expected}
    assert {r.enrollment_group_id for r in records} == {fleet["group"]}


def test_then_telemetry_sends_and_the_hub_stores_every_acknowledged_message(server: RunningServer) -> None:
    doc = simulate(
        server,
        "--devices",
        "3",
        "--attestation",
        "x509",
        "--then-telemetry",
        "0",
        "--duration",
        "0.5",
        "--window",
        "4",
    )
    tele = doc["telemetry"]
    assert (tele["devices"], tele["connected"], tele["connect_errors"], tele["errors"]) == (3, 3, {}, {})
    assert tele["acknowledged"] > 0
    _, counts = store_view(server, doc["fleet"]["prefix"], 3)
    assert len(counts) == 3 and all(n > 0 for n in counts.values())
    # A PUBACK goes out only after the message is stored: every acknowledged one is there.
    assert sum(counts.values()) >= tele["acknowledged"]


def test_paced_telemetry_with_symmetric_keys(server: RunningServer) -> None:
    doc = simulate(
        server, "--devices", "2", "--attestation", "symmetric-key", "--then-telemetry", "4", "--duration", "1"
    )
    tele = doc["telemetry"]
    assert tele["connected"] == 2 and tele["errors"] == {}
    # 4/s for 1 s: at most 4-5 messages per device (the first goes at once), at least one.
    assert 2 <= tele["acknowledged"] <= 10
    _, counts = store_view(server, doc["fleet"]["prefix"], 2)
    assert sum(counts.values()) == tele["acknowledged"]


def test_refuses_a_host_that_is_not_loopback(server: RunningServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(server.data_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "simulate", "--dps-host", "192.0.2.1", "--devices", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr


def test_stats_and_error_kinds() -> None:
    stats = PhaseStats(attempted=4, succeeded=3, elapsed=1.5, latencies=[0.3, 0.1, 0.2])
    assert stats.rate == 2.0
    doc = stats.to_json()
    assert (doc["p50_ms"], doc["p99_ms"], doc["failed"]) == (200.0, 300.0, 1)
    assert error_kind(ConnectRefused(5)) == "refused"
    assert error_kind(ProvisioningFailed("no")) == "provisioning failed"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionResetError()) == "connection"
    assert error_kind(ValueError()) == "unexpected ValueError"
