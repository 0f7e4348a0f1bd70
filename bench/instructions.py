"""Instructions per registration, counted by valgrind's callgrind: a repeatable number.

    python bench/instructions.py [-n 200] [--attestation x509|symmetric-key] [--client]
    python bench/instructions.py --telemetry [-n 20000]

Timings on a shared 2-core machine move by 10-20% between identical runs, too much to tell a
5% change from noise. Callgrind counts the instructions a process executes (user space only:
no kernel, no waiting), which stays the same from run to run for the same code and load.

By default it counts the server: `iotdps up` runs under callgrind with instrumentation off
while it starts and while the first registrations warm it up; it is switched on for exactly
`n` registrations (our device client, concurrency 4, in this process at native speed) and off
again. With `--client` it counts the load generator instead: `iotdps up` runs at native speed
and this script runs itself again under callgrind, switching instrumentation on around its own
`n` registrations. Printed: instructions per registration; the top functions by inclusive
count are in the callgrind output file named at the end (`callgrind_annotate FILE`).

With `--telemetry` it counts the hub instead: 10 devices (symmetric keys, written to the store
directly as bench/hub.py does) connect to `iotdps up` under callgrind, send 2,000 QoS 1
messages to warm up, and then exactly `n` messages (64-byte bodies, 16 in flight per device)
with counting on. Printed: server instructions per telemetry message stored and acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from iotdps.device.simulate import TelemetryStats, connect_fleet, register_fleet, send_telemetry
from registrations import prepare

# Registrations before counting starts (at native speed counting is off, but valgrind still
# runs the server about ten times slower): enough to load the CA into the trust store.
WARMUP = 10


def _total(out: Path) -> int:
    total = 0
    for path in out.parent.glob(out.name + "*"):
        found = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
        if found:
            total += int(found.group(1))
    return total


def _counted_run(server: h.Iotdps, attestation: str, n: int, work: Path, counted_pid: int) -> None:
    """Prepare, warm up, then register `n` devices with callgrind counting `counted_pid`."""
    scope, fleet = asyncio.run(prepare(server, attestation, n, work, warmup=WARMUP))
    devices = fleet.devices

    def run(part: list[Any]) -> None:
        stats = asyncio.run(register_fleet(server.address, 8883, scope, part, concurrency=4, timeout=120))[0]
        if stats.succeeded != len(part):
            raise SystemExit(f"registrations failed under callgrind: {dict(stats.errors)}")

    run(list(devices[:WARMUP]))
    control = [h.need_binary("callgrind_control", "valgrind")]
    subprocess.run([*control, "--instr=on", str(counted_pid)], check=True, capture_output=True)
    run(list(devices[WARMUP:]))
    subprocess.run([*control, "--instr=off", str(counted_pid)], check=True, capture_output=True)
    subprocess.run([*control, "--dump", str(counted_pid)], check=True, capture_output=True)


TELEMETRY_DEVICES = 10
TELEMETRY_WARMUP = 2000


def _counted_telemetry(server: h.Iotdps, n: int, counted_pid: int) -> None:
    """Connect the devices, warm up, then send `n` messages with callgrind counting `counted_pid`."""
    from hub import create_devices  # bench/hub.py: device identities straight into the store

    devices, assignments = asyncio.run(create_devices(server.dsn, server.address, TELEMETRY_DEVICES, server.server_ca))
    control = [h.need_binary("callgrind_control", "valgrind")]

    async def run() -> None:
        stats = TelemetryStats()
        clients = await connect_fleet(devices, assignments, port=8883, concurrency=10, stats=stats, timeout=120)
        if len(clients) != TELEMETRY_DEVICES:
            raise SystemExit(f"devices failed to connect under callgrind: {dict(stats.connect_errors)}")
        try:
            for count, instrument in ((TELEMETRY_WARMUP, None), (n, "on")):
                if instrument:
                    subprocess.run([*control, "--instr=on", str(counted_pid)], check=True, capture_output=True)
                sent = TelemetryStats()
                await send_telemetry(clients, sent, rate=0, duration=3600, window=16, max_messages=count, timeout=120)
                if sent.acknowledged != count or sent.errors:
                    raise SystemExit(f"telemetry failed under callgrind: {sent.acknowledged} of {count}, {sent.errors}")
            subprocess.run([*control, "--instr=off", str(counted_pid)], check=True, capture_output=True)
            subprocess.run([*control, "--dump", str(counted_pid)], check=True, capture_output=True)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="registrations counted")
    ap.add_argument("--attestation", choices=["x509", "symmetric-key"], default="x509")
    ap.add_argument("--client", action="store_true", help="count the load generator, not the server")
    ap.add_argument("--telemetry", action="store_true", help="count the hub's telemetry path, per message")
    ap.add_argument("--out", type=Path, default=None, help="callgrind output file")
    ap.add_argument("--in-callgrind", action="store_true", help=argparse.SUPPRESS)  # the --client child
    args = ap.parse_args()
    if args.in_callgrind:  # we are the load generator under callgrind; the parent reads the counts
        with h.temp_dir("iotdps-bench-ir-") as tmp, h.iotdps_up(Path(tmp)) as server:
            _counted_run(server, args.attestation, args.n, Path(tmp), os.getpid())
        return
    valgrind = h.need_binary("valgrind", "valgrind")
    if args.telemetry and args.client:
        ap.error("--telemetry counts the server; it does not combine with --client")
    suffix = "-client" if args.client else "-telemetry" if args.telemetry else ""
    out = (args.out or Path("callgrind.out.iotdps" + suffix)).resolve()
    for old in out.parent.glob(out.name + "*"):  # a dump per switch-off: sum only this run's
        old.unlink()
    wrapper = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    if args.client:
        child = [*wrapper, sys.executable, __file__, "--in-callgrind", "-n", str(args.n)]
        subprocess.run([*child, "--attestation", args.attestation], check=True)
    elif args.telemetry:
        with h.temp_dir("iotdps-bench-ir-") as tmp:
            with h.iotdps_up(Path(tmp), wrapper=wrapper, start_timeout=600) as server:
                _counted_telemetry(server, args.n, server.process.pid)
        print(f"instructions: telemetry, {args.n} QoS 1 messages counted")
        print(f"iotdps server: {_total(out) / args.n / 1e3:.1f} K instructions per telemetry message  ({out})")
        return
    else:
        with h.temp_dir("iotdps-bench-ir-") as tmp:
            with h.iotdps_up(Path(tmp), wrapper=wrapper, start_timeout=600) as server:
                _counted_run(server, args.attestation, args.n, Path(tmp), server.process.pid)
    print(f"instructions: {args.attestation}, {args.n} registrations counted")
    name = "load generator (our device client)" if args.client else "iotdps server"
    print(f"{name}: {_total(out) / args.n / 1e6:.2f} M instructions per registration  ({out})")


if __name__ == "__main__":
    main()
