"""Real parts for cluster tests: a PostgreSQL database of the test's own, a NATS server with
JetStream, HAProxy in TCP mode on loopback, and `iotdps up` nodes behind it.

Every node is a real `python -m iotdps up` subprocess on its own 127.x.y.z address; the
balancer takes another address and forwards the SDK's fixed ports (8883, 443) to the nodes,
with a fast health check so a killed node leaves the rotation within a second.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from iotdps.audit import Actor
from iotdps.enrollment.models import Attestation, IndividualEnrollment, SymmetricKeyAttestation
from iotdps.provisioning.admin import put_enrollment
from iotdps.secret import Secret
from iotdps.store import open_store
from iotdps_testing.net import free_loopback_address, free_port
from iotdps_testing.server import READY_LINE, SRC, RunningServer

__all__ = [
    "PASSPHRASE",
    "Balancer",
    "NatsServer",
    "node_config",
    "pg_database",
    "start_node",
    "wait_port",
]

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PASSPHRASE = "cluster-test-passphrase-" + secrets.token_hex(8)


def _sbin(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed (see .ci/run)")
    return found


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


async def _pg(*statements: str) -> None:
    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@contextmanager
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (created, then dropped with its sessions)."""
    name = f"iotdps_cluster_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class NatsServer:
    """nats-server on 127.0.0.1 and a free port, JetStream storing under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        store = tmp / "nats-js"
        store.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp / "nats.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [_sbin("nats-server"), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_port("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


class Balancer:
    """HAProxy in TCP mode: `address`:8883 and :443 to the same ports of every node."""

    def __init__(self, tmp: Path, nodes: Sequence[str], address: str | None = None) -> None:
        self.address = address or free_loopback_address()
        lines = [
            "global",
            "  maxconn 4000",  # within the default open-files limit
            "defaults",
            "  mode tcp",
            "  timeout connect 2s",
            "  timeout client 5m",
            "  timeout server 5m",
            "  default-server inter 300ms fall 1 rise 1",
        ]
        for port in (8883, 443):
            lines += [
                f"frontend f{port}",
                f"  bind {self.address}:{port}",
                f"  default_backend b{port}",
                f"backend b{port}",
                "  balance roundrobin",
                # A dead node's connections are cut at once, so its devices reconnect elsewhere.
                "  option redispatch",
            ]
            lines += [
                f"  server n{i} {node}:{port} check on-marked-down shutdown-sessions" for i, node in enumerate(nodes)
            ]
        config = tmp / "haproxy.cfg"
        config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp / "haproxy.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [_sbin("haproxy"), "-db", "-f", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_port(self.address, 8883)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def node_config(data_dir: Path, address: str, service_host: str, dsn: str, nats_url: str = "", extra: str = "") -> str:
    """A node's TOML: its listeners on `address`, the service's names (DPS and hub) on the
    balancer's `service_host`."""
    cluster = f'[cluster]\nnats_url = "{nats_url}"\nheartbeat_seconds = 0.5\nlease_seconds = 2.0\n' if nats_url else ""
    return (
        f'data_dir = "{data_dir}"\ndsn = "{dsn}"\n'
        f'[dps]\nhost_name = "{service_host}"\nbind = "{address}"\n'
        f'[management]\nbind = "{address}"\nport = 8443\n'
        f'[tls]\nextra_names = ["{service_host}"]\n' + cluster + extra
    )


def start_node(
    tmp: Path,
    *,
    service_host: str,
    dsn: str,
    nats_url: str = "",
    address: str | None = None,
    extra: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    expect_failure: bool = False,
) -> RunningServer:
    address = address or free_loopback_address((8883, 443, 8443))
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / f"node-{address}"
    config_path = tmp / f"node-{address}.toml"
    config_path.write_text(node_config(data_dir, address, service_host, dsn, nats_url, extra))
    server_env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    server_env["IOTDPS_SERVER_CA_PASSPHRASE"] = PASSPHRASE
    server_env.update(env or {})
    server_env = {k: v for k, v in server_env.items() if v != ""}
    log_path = tmp / f"node-{address}.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "iotdps", "up", "--config", str(config_path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=server_env,
        text=True,
    )
    node = RunningServer(address, data_dir, process, log_path, env={"IOTDPS_DATA_DIR": str(data_dir)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if expect_failure:
                return node
            raise RuntimeError(f"iotdps up exited with {process.returncode}:\n{node.log()}")
        log = node.log()
        if READY_LINE in log:
            if expect_failure:
                node.stop()
                raise AssertionError(f"the node started but should not have:\n{log}")
            for line in log.splitlines():
                if line.strip().startswith("ID scope"):
                    node.id_scope = line.split()[2]
            return node
        time.sleep(0.05)
    node.stop()
    raise RuntimeError(f"iotdps up did not start within {timeout} s:\n{node.log()}")


async def enroll_symmetric_key(dsn: str, name: str) -> str:
    """An individual symmetric-key enrollment `name` written straight into the shared database;
    its primary key (the secondary is the same)."""
    key = base64.b64encode(os.urandom(32)).decode()
    store = await open_store(dsn)
    try:
        att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(key)))
        await put_enrollment(store, IndividualEnrollment(name, att), actor=Actor("local", "test"))
    finally:
        await store.close()
    return key
