"""Shared plumbing of the benchmarks: a real `iotdps up`, reference servers, CPU accounting.

Every server runs in its own process on its own random 127.x.y.z address (never 127.0.0.1,
where the machine's own services live), and is stopped by pid when the benchmark ends. The
benchmark process itself is the load generator, so server and client share the machine's
cores exactly as they would in the field; the CPU each server used is read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TICK = os.sysconf("SC_CLK_TCK")

# TLS 1.2 suites offered by both sides of every comparison: the list iotdps serves.
from iotdps.server.tls import TLS12_CIPHERS  # noqa: E402


def free_address(port: int) -> str:
    """A random 127.x.y.z (x != 0) where `port` is free."""
    rng = random.SystemRandom()
    for _ in range(200):
        addr = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
        return addr
    raise RuntimeError("no free loopback address")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def postgres_postmaster() -> int | None:
    """The pid of the machine's PostgreSQL server (its postmaster): the process named
    `postgres` whose parent is not one; None when no PostgreSQL runs here."""
    named: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if stat[stat.index("(") + 1 : stat.rindex(")")] == "postgres":
                named[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    roots = [pid for pid, parent in named.items() if parent not in named]
    return min(roots) if roots else None


def postgres_cpu_seconds(postmaster: int) -> float:
    """User + system CPU of the whole PostgreSQL server so far: the postmaster, its live
    processes (backends, WAL writer, checkpointer), and the backends that have exited, which
    the postmaster reaped (cutime/cstime). Everything the database did for every client."""
    total = sum(int(f) for f in _stat_fields(postmaster)[11:15]) / TICK
    for child in children(postmaster):
        with contextlib.suppress(OSError):  # a backend that exited meanwhile
            total += cpu_seconds(child)
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Iotdps:
    address: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    dsn: str

    @property
    def server_ca(self) -> str:
        return (self.data_dir / "tls" / "server-ca.pem").read_text()


@contextlib.contextmanager
def iotdps_up(
    work: Path,
    *,
    dsn: str | None = None,
    extra_config: str = "",
    wrapper: Sequence[str] = (),
    start_timeout: float = 60.0,
) -> Iterator[Iotdps]:
    """`python -m iotdps up` on a fresh address and data dir, as a user runs it (log level
    info, to a file); stopped on exit. `wrapper` goes before the command (valgrind...)."""
    address = free_address(8883)
    data_dir = work / "iotdps-data"
    config = work / "iotdps.toml"
    text = f'data_dir = "{data_dir}"\n'
    if dsn:
        text += f'dsn = "{dsn}"\n'
    text += f'[dps]\nhost_name = "{address}"\nbind = "{address}"\n[management]\nbind = "{address}"\n' + extra_config
    config.write_text(text)
    log = work / "iotdps.log"
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "iotdps", "up", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while "iotdps is up" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iotdps up did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        yield Iotdps(address, data_dir, process, log, dsn or f"sqlite:///{data_dir / 'iotdps.db'}")
    finally:
        stop(process)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth); dropped after."""
    if shutil.which("psql") is None:
        raise RuntimeError("psql not found: PostgreSQL is needed for --store postgres")
    name = f"iotdps_bench_{secrets.token_hex(4)}"
    subprocess.run(["psql", PG_ADMIN_DSN, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(
            ["psql", PG_ADMIN_DSN, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True
        )


def need_binary(name: str, apt: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise SystemExit(f"{name} is not installed: apt-get install -y {apt}")
    return path


@dataclass
class Nginx:
    address: str
    port: int
    master: subprocess.Popen[bytes]

    @property
    def worker(self) -> int:
        workers = children(self.master.pid)
        assert workers, "nginx has no worker"
        return workers[0]


@contextlib.contextmanager
def nginx_tls(work: Path, cert_chain: Path, key: Path, client_ca: Path, *, port: int = 8883) -> Iterator[Nginx]:
    """nginx as a bare TLS server: one worker process (iotdps serves from one event loop),
    TLS 1.2 only, the same suites and certificates as iotdps, no session cache and no tickets
    (no resumption on either side), and a client certificate requested and verified when
    presented (`optional`, as iotdps asks every device and symmetric-key devices send none)."""
    binary = need_binary("nginx", "nginx-light")
    address = free_address(port)
    root = work / "nginx"
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
    server {{
        listen {address}:{port} ssl;
        ssl_certificate {cert_chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2;
        ssl_ciphers {":".join(TLS12_CIPHERS)};
        ssl_prefer_server_ciphers on;
        ssl_session_cache off;
        ssl_session_tickets off;
        ssl_verify_client optional;
        ssl_verify_depth 4;
        ssl_client_certificate {client_ca};
        location / {{ return 200 "ok"; }}
    }}
}}
"""
    )
    master = subprocess.Popen([binary, "-c", str(conf), "-p", str(root)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex((address, port)) == 0:
                    break
            if master.poll() is not None or time.monotonic() > deadline:
                err = master.stderr.read().decode(errors="replace") if master.stderr else ""
                raise RuntimeError(f"nginx did not start: {err}")
            time.sleep(0.05)
        yield Nginx(address, port, master)
    finally:
        stop(master)


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)
