"""First start: the banner's commands and SDK snippet work exactly as printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotdps_testing.server import start_server

pytestmark = pytest.mark.e2e


def test_first_start_banner_snippet_provisions_a_device(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        banner = server.log()
        for words in ("ID scope", "server CA", "mqtts://", "Management API credentials", "First start"):
            assert words in banner
        assert str(server.server_ca_path) in banner
        # The two commands the banner prints, then its snippet, run from a scratch directory.
        work = tmp_path / "device"
        work.mkdir()
        server.cli("enrollment", "create", "my-device", "--symmetric-key")
        (work / "device.key").write_text(server.cli("enrollment", "show", "my-device", "--primary-key"))
        lines = banner.splitlines()
        start = next(i for i, line in enumerate(lines) if "from azure.iot.device import" in line)
        end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("print("))
        snippet = "\n".join(line[4:] for line in lines[start : end + 1])
        result = subprocess.run(
            [sys.executable, "-c", snippet], cwd=work, capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["assigned", server.address, "my-device"]
    finally:
        assert server.stop() == 0
    # A second start is not a first start: no credentials or snippet again.
    again = start_server(tmp_path, address=server.address)
    try:
        assert "First start" not in again.log()
        assert "Management API credentials" not in again.log()
        assert again.id_scope == server.id_scope
    finally:
        assert again.stop() == 0
