"""A real `iotdps up` in a subprocess on its own loopback address, for end-to-end tests.

The server runs exactly as a user runs it (`python -m iotdps up`), with its own data dir and
a random 127.x.y.z address so it can take the SDK's fixed ports 8883 and 443. Tests drive its
administration through the CLI in-process (click's CliRunner on the same data dir) and read
the store directly when they need the operator's view (refusal reasons).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from iotdps_testing.net import free_loopback_address

__all__ = ["RunningServer", "start_server"]

SRC = Path(__file__).resolve().parents[2] / "src"
READY_LINE = "iotdps is up"


@dataclass
class RunningServer:
    address: str
    data_dir: Path
    process: subprocess.Popen[str]
    log_path: Path
    id_scope: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def server_ca_path(self) -> Path:
        return self.data_dir / "tls" / "server-ca.pem"

    @property
    def server_ca(self) -> str:
        return self.server_ca_path.read_text()

    def cli(self, *args: str, expect: int = 0, input: str | None = None) -> str:
        """Run an `iotdps` command on this server's data dir, in-process; return stdout."""
        from iotdps.cli.main import cli

        result = CliRunner().invoke(cli, list(args), env=self.env, input=input, catch_exceptions=False)
        if result.exit_code != expect:
            raise AssertionError(
                f"iotdps {' '.join(args)} exited {result.exit_code}, expected {expect}:\n{result.output}"
            )
        return result.output

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args))

    def symmetric_keys(self, kind: str, name: str) -> tuple[str, str]:
        """Primary and secondary key of enrollment or group `name` (`kind`: "enrollment", "group")."""
        keys = self.cli_json(kind, "show", name, "--show-keys")["attestation"]["symmetricKey"]
        return keys["primaryKey"], keys["secondaryKey"]

    def refusals(self, registration_id: str | None = None) -> list[Any]:
        """The operator's view: refusal log entries, newest first."""
        from iotdps.store import open_store

        async def read() -> list[Any]:
            store = await open_store(f"sqlite:///{self.data_dir / 'iotdps.db'}", create=False)
            try:
                async with store.begin() as uow:
                    return list(await uow.refusals.list(registration_id, limit=50))
            finally:
                await store.close()

        return asyncio.run(read())

    def registration(self, registration_id: str) -> Any:
        from iotdps.store import open_store

        async def read() -> Any:
            store = await open_store(f"sqlite:///{self.data_dir / 'iotdps.db'}", create=False)
            try:
                async with store.begin() as uow:
                    return await uow.registrations.get(registration_id)
            finally:
                await store.close()

        return asyncio.run(read())

    def telemetry(self, hub: str, device_id: str) -> list[Any]:
        """The telemetry messages the store holds for `device_id` on `hub`, oldest first."""
        from iotdps.store import open_store

        async def read() -> list[Any]:
            store = await open_store(f"sqlite:///{self.data_dir / 'iotdps.db'}", create=False)
            try:
                async with store.begin() as uow:
                    return list(await uow.telemetry.list(hub, device_id))
            finally:
                await store.close()

        return asyncio.run(read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(
    tmp: Path,
    *,
    config: str = "",
    extra_args: Sequence[str] = (),
    address: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> RunningServer:
    """Start `iotdps up` on a fresh loopback address; `config` is extra TOML appended to the
    generated file (the [dps] table is written here)."""
    address = address or free_loopback_address()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / f"data-{address}"
    config_path = tmp / f"iotdps-{address}.toml"
    config_path.write_text(
        f'data_dir = "{data_dir}"\n[dps]\nhost_name = "{address}"\nbind = "{address}"\n'
        f'[management]\nbind = "{address}"\n' + config
    )
    server_env = {**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    server_env.update(env or {})
    log_path = tmp / f"server-{address}.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "iotdps", "up", "--config", str(config_path), *extra_args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=server_env,
        text=True,
    )
    log_file.close()  # the child holds its own descriptor
    server = RunningServer(address, data_dir, process, log_path, env={"IOTDPS_DATA_DIR": str(data_dir)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"iotdps up exited with {process.returncode}:\n{server.log()}")
        text = server.log()
        if READY_LINE in text:
            for line in text.splitlines():
                if line.strip().startswith("ID scope"):
                    server.id_scope = line.split()[2]
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"iotdps up did not start within {timeout} s:\n{server.log()}")
