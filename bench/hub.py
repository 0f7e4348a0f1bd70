"""The hub under load: idle connections held, and QoS 1 telemetry persisted next to Mosquitto.

    python bench/hub.py [--idle 10000] [--devices 50] [--window 32] [--duration 10]

1. Idle connections. `--idle` device identities (symmetric keys) are created on the hub in
   the store directly (registration has its own benchmark), then our device client connects
   them all (TLS 1.2, CONNECT with a SAS token, one SUBSCRIBE, keep-alive 300 s so nothing is
   sent while idle). Printed: connections held, and the resident memory of `iotdps up` per
   connection (RSS after minus RSS before, divided by the connections).
2. Telemetry. `--devices` of them send QoS 1 telemetry (64-byte bodies) for `--duration`
   seconds, each keeping `--window` messages in flight; a message counts when its PUBACK
   arrived, which iotdps sends only after the message is committed to SQLite (group commit).
   The rows in the store are counted afterwards.
3. Mosquitto (Debian package, its own instance on the same address and port once iotdps has
   stopped, same certificate, TLS 1.2, same suites) gets the same clients and the same load.
   Persistence: `persistence true` with Mosquitto's default autosave (every 1800 s). Nothing
   subscribes, so Mosquitto acknowledges each QoS 1 message after routing it nowhere and
   never writes it to disk: it does strictly less work per message than iotdps, which stores
   every message before acknowledging it. That is the broker rate a hub would have to match.

Process layout: server and this script (the load generator) share the cores. Prints only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pwd
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from iotdps.device.credentials import SymmetricKey, tls_context
from iotdps.device.fleet import SimDevice
from iotdps.device.hub_client import HubClient
from iotdps.device.provision import Assignment
from iotdps.device.simulate import TelemetryStats, connect_fleet, send_telemetry
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.secret import Secret
from iotdps.store import open_store


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))


async def create_devices(dsn: str, hub: str, n: int, ca_pem: str) -> tuple[list[SimDevice], dict[str, Assignment]]:
    store = await open_store(dsn, create=False)
    key = base64.b64encode(os.urandom(32)).decode()
    context = tls_context(ca_pem, SymmetricKey(Secret(key)))  # no client certificate: one context serves all
    devices, assignments = [], {}
    try:
        for start in range(0, n, 1000):
            async with store.begin() as uow:
                for i in range(start, min(n, start + 1000)):
                    device_id = f"idle-{i:06d}"
                    auth = DeviceAuth("sas", Secret(key), Secret(key))
                    await uow.devices.put(DeviceIdentity(hub, device_id, auth, registration_id=device_id))
                    devices.append(SimDevice(device_id, SymmetricKey(Secret(key)), context))
                    assignments[device_id] = Assignment(device_id, hub, device_id)
    finally:
        await store.close()
    return devices, assignments


def stored_telemetry(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM hub_telemetry").fetchone()[0])


async def idle_then_telemetry(
    devices: list[SimDevice],
    assignments: dict[str, Assignment],
    pid: int,
    args: argparse.Namespace,
) -> tuple[TelemetryStats, int, int, float, TelemetryStats]:
    idle = TelemetryStats()
    rss0 = h.rss_bytes(pid)
    clients = await connect_fleet(
        devices, assignments, port=8883, concurrency=args.concurrency, stats=idle, keepalive=300
    )
    await asyncio.sleep(2)  # let the server settle (session restore tasks, buffers)
    held = sum(1 for c in clients if c.connected)
    rss1 = h.rss_bytes(pid)
    for c in clients[args.devices :]:
        await c.close()
    busy = [c for c in clients[: args.devices] if c.connected]
    tele = TelemetryStats(devices=len(busy), connected=len(busy))
    cpu0 = h.cpu_seconds(pid)
    await send_telemetry(busy, tele, rate=0, duration=args.duration, window=args.window)
    cpu = h.cpu_seconds(pid) - cpu0
    await asyncio.gather(*(c.close() for c in busy), return_exceptions=True)
    return idle, held, rss1 - rss0, cpu, tele


async def mosquitto_load(host: str, n: int, ca_pem: str, args: argparse.Namespace) -> tuple[TelemetryStats, float, int]:
    key = base64.b64encode(os.urandom(32)).decode()
    context = tls_context(ca_pem, SymmetricKey(Secret(key)))
    clients = []
    for i in range(n):
        c = HubClient(host, f"idle-{i:06d}", SymmetricKey(Secret(key)), keepalive=300, ssl_context=context)
        await c.connect()
        clients.append(c)
    tele = TelemetryStats(devices=n, connected=n)
    await send_telemetry(clients, tele, rate=0, duration=args.duration, window=args.window)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return tele, 0.0, 0


def mosquitto_conf(work: Path, address: str, tls: Path) -> Path:
    from iotdps.server.tls import TLS12_CIPHERS

    store = work / "mosquitto"
    store.mkdir(exist_ok=True)
    conf = store / "mosquitto.conf"
    conf.write_text(
        f"""# As the invoking user (a root mosquitto would switch to user mosquitto, which may not
# read the iotdps data dir, 0700); iotdps runs as the invoking user too.
user {pwd.getpwuid(os.getuid()).pw_name}
persistence true
persistence_location {store}/
log_dest file {store}/mosquitto.log
allow_anonymous true
listener 8883 {address}
certfile {tls / "server.pem"}
keyfile {tls / "server.key"}
cafile {tls / "server-ca.pem"}
require_certificate false
tls_version tlsv1.2
ciphers {":".join(TLS12_CIPHERS)}
max_connections -1
"""
    )
    return conf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    ap.add_argument("--devices", type=int, default=50, help="devices sending telemetry")
    ap.add_argument("--window", type=int, default=32, help="QoS 1 messages in flight per device")
    ap.add_argument("--duration", type=float, default=10.0, help="telemetry seconds per side")
    ap.add_argument("--concurrency", type=int, default=100, help="connections opened at a time")
    args = ap.parse_args()
    args.idle = max(args.idle, args.devices)
    _raise_fd_limit(args.idle + 1000)
    mosquitto = h.need_binary("mosquitto", "mosquitto")

    with h.temp_dir("iotdps-bench-hub-") as tmp:
        work = Path(tmp)
        with h.iotdps_up(work) as server:
            devices, assignments = asyncio.run(create_devices(server.dsn, server.address, args.idle, server.server_ca))
            db = server.data_dir / "iotdps.db"
            rows0 = stored_telemetry(db)
            idle, held, rss, cpu, tele = asyncio.run(
                idle_then_telemetry(devices, assignments, server.process.pid, args)
            )
            address, ca_pem, tls = server.address, server.server_ca, server.data_dir / "tls"
        rows = stored_telemetry(db) - rows0

        conf = mosquitto_conf(work, address, tls)
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            cpu0 = h.cpu_seconds(broker.pid)
            ref, _, _ = asyncio.run(mosquitto_load(address, args.devices, ca_pem, args))
            ref_cpu = h.cpu_seconds(broker.pid) - cpu0
        finally:
            h.stop(broker)

    print(f"hub: {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"idle   : {held} of {args.idle} connections held ({dict(idle.connect_errors) or 'no errors'}), "
        f"connected in {idle.connect_seconds:.1f} s; iotdps RSS +{rss / 2**20:.0f} MiB = "
        f"{rss / max(held, 1) / 1024:.1f} KiB per connection"
    )
    print(
        f"iotdps   : {tele.rate:9.0f} QoS 1 messages/s acknowledged ({tele.acknowledged} in {tele.elapsed:.1f} s, "
        f"{rows} rows stored, errors {dict(tele.errors) or 0}), server CPU "
        f"{1e6 * cpu / max(tele.acknowledged, 1):.0f} us/message; {args.devices} devices x window {args.window}"
    )
    print(
        f"mosquitto: {ref.rate:9.0f} QoS 1 messages/s acknowledged ({ref.acknowledged} in {ref.elapsed:.1f} s, "
        f"errors {dict(ref.errors) or 0}), broker CPU {1e6 * ref_cpu / max(ref.acknowledged, 1):.0f} us/message"
    )
    if ref.rate:
        print(f"ratio    : iotdps persists {100 * tele.rate / ref.rate:.0f}% of Mosquitto's rate (target >= 20,000/s)")


if __name__ == "__main__":
    main()
