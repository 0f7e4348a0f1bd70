"""Registrations and telemetry through a load balancer with 1 and 2 nodes, and what N nodes
on machines of their own would do.

    python bench/cluster.py [-n 600] [--devices 50] [--seconds 5] [--concurrency 20] [--nats-route]
                            [--nodes 1,2] [--node-cores 2] [--db-cores 2] [--broker-cores 1]

For each node count: a fresh PostgreSQL database, nats-server, that many `iotdps up` nodes (one
service: the first initialises it, the others join with the shared passphrase) and HAProxy in
TCP mode in front of 8883, all on this machine. Through the balancer, `n` symmetric-key devices
register (MQTT over TLS 1.2, our device client, `concurrency` at a time), then `--devices` of
them connect to the hub and send QoS 1 telemetry for `--seconds` (16 in flight per device);
with `--nats-route` each message is also published to NATS (the `nats` telemetry route).
CPU is read from /proc in clock ticks (10 ms): use enough operations (the defaults) for the
per-operation numbers to mean something.

Printed per phase: the rate, and CPU per operation of each node, of the database (the whole
PostgreSQL server, from /proc), of the broker and of the balancer, and of this script (the load
generator). Everything shares this machine's cores, so the measured rates say little about a
real deployment; the CPU per operation does. From the 2-node run's CPU per operation (it
includes what crossing nodes costs) it projects the rate of N nodes on machines of their own
(`--node-cores` each), the database on its own (`--db-cores`) and the broker on its own
(`--broker-cores`): min(N x node cores / node CPU per op, db cores / db CPU per op, broker
cores / broker CPU per op), and names the part that limits it. Load generator and balancer are
left out of the projection (in the field they are the devices and a balancer sized for them).

Bounded: at most 20,000 registrations, 2,000 telemetry devices, 60 s of telemetry, 4 nodes.
It prints; it never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from iotdps.cli.local import LocalAdminClient
from iotdps.device.fleet import Fleet, create_fleet
from iotdps.device.simulate import PhaseStats, TelemetryStats, connect_fleet, register_fleet, send_telemetry
from iotdps.store import open_store

WARMUP = 100
PASSPHRASE = "bench-cluster-" + secrets.token_hex(12)


@dataclass
class Cluster:
    service: str
    nodes: list[h.Iotdps]
    nats: subprocess.Popen[bytes]
    haproxy: subprocess.Popen[bytes]
    dsn: str


def _wait_log(log: Path, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while "iotdps is up" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iotdps up did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def _wait_port(address: str, port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {address}:{port}")


def _node(work: Path, i: int, service: str, dsn: str, nats_url: str, extra: str) -> h.Iotdps:
    address = h.free_address(8883)
    data_dir = work / f"node{i}"
    config = work / f"node{i}.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\ndsn = "{dsn}"\n'
        f'[dps]\nhost_name = "{service}"\nbind = "{address}"\n'
        f'[management]\nbind = "{address}"\n[tls]\nextra_names = ["{service}"]\n'
        f'[cluster]\nnats_url = "{nats_url}"\n' + extra
    )
    log = work / f"node{i}.log"
    env = {**os.environ, "PYTHONPATH": str(h.SRC), "PYTHONUNBUFFERED": "1", "IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotdps", "up", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_log(log, process)
    except BaseException:
        h.stop(process)
        raise
    return h.Iotdps(address, data_dir, process, log, dsn)


@contextlib.contextmanager
def cluster(work: Path, count: int, extra: str = "") -> Iterator[Cluster]:
    nats_bin, haproxy_bin = h.need_binary("nats-server", "nats-server"), h.need_binary("haproxy", "haproxy")
    service = h.free_address(8883)
    nats_port = _free_port()
    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(h.postgres_database())
        nats = subprocess.Popen(
            [nats_bin, "-a", "127.0.0.1", "-p", str(nats_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stack.callback(h.stop, nats)
        _wait_port("127.0.0.1", nats_port)
        nodes: list[h.Iotdps] = []
        for i in range(count):  # the first initialises the service, the others join it
            node = _node(work, i, service, dsn, f"nats://127.0.0.1:{nats_port}", extra)
            stack.callback(h.stop, node.process)
            nodes.append(node)
        lines = ["global", "  maxconn 4000", "defaults", "  mode tcp", "  timeout connect 2s"]
        lines += ["  timeout client 5m", "  timeout server 5m", "frontend f", f"  bind {service}:8883"]
        lines += ["  default_backend b", "backend b", "  balance roundrobin"]
        lines += [f"  server n{i} {n.address}:8883" for i, n in enumerate(nodes)]
        cfg = work / "haproxy.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        haproxy = subprocess.Popen(
            [haproxy_bin, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        stack.callback(h.stop, haproxy)
        _wait_port(service, 8883)
        yield Cluster(service, nodes, nats, haproxy, dsn)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _prepare(c: Cluster, n: int, work: Path) -> tuple[str, Fleet]:
    store = await open_store(c.dsn, create=False)
    try:
        admin = LocalAdminClient(store)
        settings = await admin.get_settings()
        assert settings is not None
        fleet = await create_fleet(admin, "symmetric-key", n, work / "devices", c.nodes[0].server_ca)
        return settings.id_scope, fleet
    finally:
        await store.close()


@dataclass
class Cpu:
    nodes: list[float]
    db: float
    broker: float
    balancer: float
    client: float

    @staticmethod
    def read(c: Cluster, postmaster: int) -> Cpu:
        return Cpu(
            [h.cpu_seconds(n.process.pid) for n in c.nodes],
            h.postgres_cpu_seconds(postmaster),
            h.cpu_seconds(c.nats.pid),
            h.cpu_seconds(c.haproxy.pid),
            time.process_time(),
        )

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            [a - b for a, b in zip(self.nodes, other.nodes, strict=True)],
            self.db - other.db,
            self.broker - other.broker,
            self.balancer - other.balancer,
            self.client - other.client,
        )


def _report(label: str, ops: int, rate: float, cpu: Cpu) -> str:
    def per(seconds: float) -> str:
        return f"{1e6 * seconds / ops:7.0f} us" if ops else "      - "

    nodes = " ".join(f"node{i} {per(s)}" for i, s in enumerate(cpu.nodes))
    return (
        f"{label:<28} {ops:7d} ops {rate:9.1f}/s   CPU/op: {nodes}  (nodes {per(sum(cpu.nodes))})"
        f"  database {per(cpu.db)}  broker {per(cpu.broker)}  balancer {per(cpu.balancer)}  client {per(cpu.client)}"
    )


def project(
    label: str, ops: int, cpu: Cpu, counts: Sequence[int], node_cores: int, db_cores: int, broker_cores: int
) -> None:
    if not ops:
        return
    node, db, broker = sum(cpu.nodes) / ops, cpu.db / ops, cpu.broker / ops
    parts = []
    for n in counts:
        limits = {"nodes": n * node_cores / node if node > 0 else float("inf")}
        limits["database"] = db_cores / db if db > 0 else float("inf")
        limits["broker"] = broker_cores / broker if broker > 0 else float("inf")
        which = min(limits, key=lambda k: limits[k])
        parts.append(f"{n} node(s) {limits[which]:,.0f}/s ({which})")
    print(f"projected {label}: " + ", ".join(parts), flush=True)


def run(count: int, args: argparse.Namespace) -> tuple[tuple[int, Cpu], tuple[int, Cpu]]:
    postmaster = h.postgres_postmaster()
    if postmaster is None:
        raise SystemExit("PostgreSQL is not running on this machine (127.0.0.1:5432)")
    extra = '[telemetry]\nroutes = ["sql", "nats"]\n' if args.nats_route else ""
    with h.temp_dir("iotdps-bench-cluster-") as tmp, cluster(Path(tmp), count, extra) as c:
        scope, fleet = asyncio.run(_prepare(c, args.n + WARMUP, Path(tmp)))
        devices = fleet.devices
        asyncio.run(register_fleet(c.service, 8883, scope, devices[:WARMUP], concurrency=args.concurrency))

        before = Cpu.read(c, postmaster)
        stats, assignments = asyncio.run(
            register_fleet(c.service, 8883, scope, devices[WARMUP:], concurrency=args.concurrency)
        )
        reg_cpu = Cpu.read(c, postmaster) - before
        print(_report(f"{count} node(s) registrations", stats.succeeded, stats.rate, reg_cpu), _errors(stats))

        async def telemetry() -> tuple[TelemetryStats, Cpu]:
            tstats = TelemetryStats()
            chosen = [d for d in devices[WARMUP:] if d.registration_id in assignments][: args.devices]
            clients = await connect_fleet(chosen, assignments, port=8883, concurrency=args.concurrency, stats=tstats)
            try:
                start = Cpu.read(c, postmaster)
                await send_telemetry(clients, tstats, rate=0, duration=args.seconds, window=16)
                return tstats, Cpu.read(c, postmaster) - start
            finally:
                await asyncio.gather(*(cl.close() for cl in clients), return_exceptions=True)

        tstats, tel_cpu = asyncio.run(telemetry())
        print(
            _report(f"{count} node(s) telemetry", tstats.acknowledged, tstats.rate, tel_cpu),
            f"({tstats.connected} devices)",
            f"errors {dict(tstats.errors) or 0}",
            flush=True,
        )
        return (stats.succeeded, reg_cpu), (tstats.acknowledged, tel_cpu)


def _errors(stats: PhaseStats) -> str:
    return f"errors {dict(stats.errors) or 0}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=600, help="registrations per node count (default 600)")
    ap.add_argument("--devices", type=int, default=50, help="devices sending telemetry (default 50)")
    ap.add_argument("--seconds", type=float, default=5.0, help="telemetry duration (default 5)")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--nodes", default="1,2", help="node counts to run, comma-separated (default 1,2)")
    ap.add_argument("--node-cores", type=int, default=2, help="cores per node machine, for the projection")
    ap.add_argument("--db-cores", type=int, default=2, help="cores of the database machine, for the projection")
    ap.add_argument("--broker-cores", type=int, default=1, help="cores of the NATS machine, for the projection")
    ap.add_argument("--nats-route", action="store_true", help="also publish telemetry to NATS (the nats route)")
    ap.add_argument("--project", default="1,2,4,8", help="node counts to project (default 1,2,4,8)")
    args = ap.parse_args()
    args.n = max(1, min(args.n, 20_000))
    args.devices = max(1, min(args.devices, 2_000, args.n))
    args.seconds = max(0.5, min(args.seconds, 60.0))
    counts = [max(1, min(int(x), 4)) for x in args.nodes.split(",") if x.strip()]
    projected = [max(1, min(int(x), 1000)) for x in args.project.split(",") if x.strip()]
    print(
        f"cluster: {args.nodes} node(s) behind HAProxy, PostgreSQL, NATS, all on this machine "
        f"({len(os.sched_getaffinity(0))} cores), symmetric-key registrations over MQTT/TLS 1.2, "
        f"concurrency {args.concurrency}, telemetry routes sql{' + nats' if args.nats_route else ''}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    last: tuple[tuple[int, Cpu], tuple[int, Cpu]] | None = None
    for count in counts:
        last = run(count, args)
    if last is not None:
        (reg_ops, reg_cpu), (tel_ops, tel_cpu) = last
        cores = (args.node_cores, args.db_cores, args.broker_cores)
        print(
            f"projection from the {counts[-1]}-node run: nodes {args.node_cores} cores each, "
            f"database {args.db_cores}, broker {args.broker_cores}, each on a machine of its own"
        )
        project("registrations", reg_ops, reg_cpu, projected, *cores)
        project("telemetry", tel_ops, tel_cpu, projected, *cores)


if __name__ == "__main__":
    main()
