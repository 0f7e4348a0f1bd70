"""`iotdps status` (issue 17) against a real `iotdps up`: running or not, the server's pid,
which linked hubs a running node serves, and the exit code for scripts (0 running, 1 not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import SRC, start_server

pytestmark = pytest.mark.e2e


def _status(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(PYTHONPATH=str(SRC), IOTDPS_DATA_DIR=str(data_dir))
    return subprocess.run(
        [sys.executable, "-m", "iotdps", "status", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_status_of_a_running_server_then_a_stopped_one(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv")
    try:
        nobody = free_loopback_address()
        server.cli("hub", "add", nobody)  # linked, but no node serves it
        done = _status(server.data_dir, "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["running"] is True and doc["pid"] == server.process.pid
        assert doc["connections"] == 0 and doc["registrationsLastMinute"] == 0
        assert any("(management API)" in e for e in doc["endpoints"]), doc["endpoints"]
        assert any(f"{server.address}:" in e for e in doc["endpoints"]), doc["endpoints"]
        assert {h["hostName"]: h["served"] for h in doc["hubs"]} == {server.address: True, nobody: False}

        text = _status(server.data_dir).stdout
        assert f"running (pid {server.process.pid})" in text
        lines = text.splitlines()
        assert lines[1].startswith("endpoints") and all(e in text for e in doc["endpoints"])
        first_row = next(i for i, line in enumerate(lines) if line.split()[:2] == ["hub", "served"]) + 1
        rows = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in lines[first_row:] if line.strip()}
        assert rows == {server.address: "yes", nobody: "NO: no running node serves it"}
    finally:
        server.stop()
    done = _status(server.data_dir)
    assert done.returncode == 1
    assert done.stdout.startswith(f"server        not running on {server.data_dir}")
