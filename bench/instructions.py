"""Server instructions per registration, counted by valgrind's callgrind: a repeatable number.

    python bench/instructions.py [-n 200] [--attestation x509|symmetric-key]

Timings on a shared 2-core machine move by 10-20% between identical runs, too much to tell a
5% change from noise. Callgrind counts the instructions the `iotdps up` process executes
(user space only: no kernel, no waiting), which stays the same from run to run for the same
code and load. The server runs under callgrind with instrumentation off while it starts and
while the first registrations warm it up; it is switched on for exactly `n` registrations
(our device client, concurrency 4, in this process at native speed) and off again. Printed:
instructions per registration, and the top functions by inclusive count are in the
callgrind output file named at the end (`callgrind_annotate FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from iotdps.device.simulate import register_fleet
from registrations import WARMUP, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="registrations counted")
    ap.add_argument("--attestation", choices=["x509", "symmetric-key"], default="x509")
    ap.add_argument("--out", type=Path, default=Path("callgrind.out.iotdps"), help="callgrind output file")
    args = ap.parse_args()
    valgrind = h.need_binary("valgrind", "valgrind")
    out = args.out.resolve()
    for old in out.parent.glob(out.name + "*"):  # a dump per switch-off: sum only this run's
        old.unlink()
    wrapper = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with h.temp_dir("iotdps-bench-ir-") as tmp:
        work = Path(tmp)
        with h.iotdps_up(work, wrapper=wrapper, start_timeout=600) as server:
            scope, fleet = asyncio.run(prepare(server, args.attestation, args.n, work))
            devices = fleet.devices

            def run(part: list[Any]) -> None:
                stats = asyncio.run(register_fleet(server.address, 8883, scope, part, concurrency=4, timeout=120))[0]
                if stats.succeeded != len(part):
                    raise SystemExit(f"registrations failed under callgrind: {dict(stats.errors)}")

            run(list(devices[:WARMUP]))
            control = [h.need_binary("callgrind_control", "valgrind")]
            pid = str(server.process.pid)
            subprocess.run([*control, "--instr=on", pid], check=True, capture_output=True)
            run(list(devices[WARMUP:]))
            subprocess.run([*control, "--instr=off", pid], check=True, capture_output=True)
            subprocess.run([*control, "--dump", pid], check=True, capture_output=True)
    total = 0
    for path in out.parent.glob(out.name + "*"):
        found = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
        if found:
            total += int(found.group(1))
    print(f"instructions: {args.attestation}, {args.n} registrations counted")
    print(f"iotdps server: {total / args.n / 1e6:.2f} M instructions per registration  ({out})")


if __name__ == "__main__":
    main()
