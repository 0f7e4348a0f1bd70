"""One server per data directory, and what a first start prints (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from iotdps.server.datadir_lock import lock_holder
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import start_server

SRC = Path(__file__).resolve().parents[3] / "src"


def test_a_second_server_on_one_data_dir_names_the_first(tmp_path: Path) -> None:
    first = start_server(tmp_path)
    try:
        control = first.data_dir / "control.sock"
        before = control.stat().st_ino
        assert lock_holder(first.data_dir) == first.process.pid
        other = free_loopback_address()
        result = subprocess.run(
            [sys.executable, "-m", "iotdps", "up", "--bind", other, "--dps-host", other],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(first.data_dir)},
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == (
            f"error: the data directory {first.data_dir} is in use by another iotdps server "
            f"(pid {first.process.pid}); stop that one, or give this one its own --data-dir"
        )
        # The first server still owns its control socket, and the CLI still reaches it.
        assert control.stat().st_ino == before
        assert lock_holder(first.data_dir) == first.process.pid
        first.cli("device", "list", "--hub", first.address)
    finally:
        assert first.stop() == 0
    assert lock_holder(first.data_dir) is None


def test_a_first_start_is_quiet_and_its_hint_runs_as_printed(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        log = server.log()
        # Alembic's INFO lines (plugins, one per migration) are for --log-level debug.
        assert "alembic" not in log
        hints = [line.strip() for line in log.splitlines() if " enrollment " in line and "my-device" in line]
        assert len(hints) == 2, log
        create, show = hints
        # Started as `python -m iotdps` with no `iotdps` on PATH: the hint must not say bare
        # `iotdps`, and names the data dir, which is not the default one.
        assert not create.startswith("iotdps ")
        assert f"--data-dir {server.data_dir}" in create
        assert show.endswith(" > device.key")
        shell_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(SRC)}
        done = subprocess.run(["bash", "-c", create], capture_output=True, text=True, env=shell_env, timeout=60)
        assert done.returncode == 0, done.stderr
        key = subprocess.run(
            ["bash", "-c", show.removesuffix(" > device.key")],
            capture_output=True,
            text=True,
            env=shell_env,
            timeout=60,
        )
        assert key.returncode == 0, key.stderr
        assert key.stdout.strip() == server.symmetric_keys("enrollment", "my-device")[0]
    finally:
        server.stop()


def test_alembic_speaks_at_debug(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra_args=["--log-level", "debug"])
    try:
        assert "alembic.runtime.migration" in server.log()
    finally:
        server.stop()
