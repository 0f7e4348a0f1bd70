"""The implicit hub follows the DPS host, and a linked hub no running node serves is seen and
skipped (issue 17: `up`, then `up --dps-host X` on the same data dir, sent half the fleet to a
hub nobody served, and `simulate` still exited 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

SRC = Path(__file__).resolve().parents[3] / "src"


def _start(tmp_path: Path, data: Path, config: str = "") -> RunningServer:
    """`iotdps up` on the shared data dir `data` (IOTDPS_DATA_DIR wins over the generated file)."""
    server = start_server(tmp_path, config=config, env={"IOTDPS_DATA_DIR": str(data)})
    server.data_dir = data
    server.env = {"IOTDPS_DATA_DIR": str(data), "COLUMNS": "250"}
    return server


def _simulate(server: RunningServer, devices: int) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "simulate", "--dps-host", server.address, "--json", "--devices", str(devices)],
        env={**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(server.data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, json.loads(result.stdout)


def _hub_rows(server: RunningServer) -> dict[str, str]:
    """`hub list` as printed (piped: plain columns): host name -> the served column."""
    header, *lines = server.cli("hub", "list").splitlines()
    served_at = header.index("served")
    return {line.split()[0]: line[served_at:].strip() for line in lines if line.strip()}


def test_the_implicit_hub_follows_the_dps_host(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start(tmp_path, data)
    try:
        assert list(_hub_rows(first)) == [first.address]
        assert _hub_rows(first)[first.address].startswith("yes")
    finally:
        assert first.stop() == 0
    second = _start(tmp_path, data)
    try:
        # The hub `up` made for the first host name is gone, not left linked and unserved.
        assert list(_hub_rows(second)) == [second.address]
        result, report = _simulate(second, 6)
        assert result.returncode == 0, result.stderr
        assert report["hubs"] == {second.address: 6}
    finally:
        assert second.stop() == 0


def test_a_hub_no_node_serves_is_shown_warned_and_skipped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hub = free_loopback_address()
    configured = _start(tmp_path, data, config=f'[[hubs]]\nhost_name = "{hub}"\nbind = "{hub}"\n')
    try:
        assert _hub_rows(configured)[hub].startswith("yes")
    finally:
        assert configured.stop() == 0
    # The same data dir without that hub configured: it stays linked, and nobody serves it.
    server = _start(tmp_path, data)
    try:
        assert f"linked hub {hub} is served by no running iotdps node (last served until" in server.log()
        rows = _hub_rows(server)
        assert rows[hub].startswith("NO, since") and rows[server.address].startswith("yes")
        result, report = _simulate(server, 6)
        assert result.returncode == 0, result.stderr
        assert report["hubs"] == {server.address: 6}
        # With the served hub out of allocation, nothing is left: devices are refused in words,
        # and simulate says so in its exit status.
        server.cli("hub", "update", server.address, "--no-apply-allocation-policy")
        result, report = _simulate(server, 2)
        assert result.returncode == 1
        assert "error: 2 of 2 devices failed to register" in result.stderr
        refusal = server.refusals()[0]
        assert refusal.reason == "NO_HUB"
        assert f"no running iotdps node serves hub {hub}" in refusal.message
    finally:
        assert server.stop() == 0
