"""`iotdps device run` says what went wrong (issue 17): an assigned hub nobody serves is
unreachable (it was reported as CONNACK 5, a refusal), and a server certificate the device
cannot verify because --ca is missing says to pass --ca."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import SRC, RunningServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "srv")
    yield running
    running.stop()


def _device_run(server: RunningServer, key: str, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env["PYTHONPATH"] = str(SRC)
    args = ["--provisioning-host", server.address, "--id-scope", server.id_scope, "--registration-id", "runner"]
    return subprocess.run(
        [sys.executable, "-m", "iotdps", "device", "run", *args, "--symmetric-key", key, "--state", str(state),
         "--count", "0", *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_unserved_hub_is_unreachable_and_missing_ca_says_pass_ca(server: RunningServer, tmp_path: Path) -> None:
    nobody = free_loopback_address()  # linked, but no process serves it
    server.cli("hub", "add", nobody)
    server.cli("enrollment", "create", "runner", "--symmetric-key", "--hub", nobody)
    key, _ = server.symmetric_keys("enrollment", "runner")

    done = _device_run(server, key, tmp_path / "runner.json", "--ca", str(server.server_ca_path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: hub {nobody} is unreachable after 3 attempts (ConnectionRefusedError"), line
    assert "CONNACK" not in line

    done = _device_run(server, key, tmp_path / "again.json")  # no --ca
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() == (
        f"error: the certificate of {server.address} is not trusted: pass --ca FILE, the server CA "
        "(tls/server-ca.pem in the server's data dir)"
    )
