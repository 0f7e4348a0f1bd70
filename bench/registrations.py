"""Registrations per second against `iotdps up`, next to nginx's bare TLS handshake rate.

    python bench/registrations.py [-n 600] [--rounds 3] [--concurrency 20]
                                  [--attestation x509|symmetric-key] [--store sqlite|postgres]
    python bench/registrations.py --csr [-n 300] [--rounds 3] [--hsm]   (certificate issuance, issue 18)

With `--csr` it measures issuance instead of the nginx comparison: see bench/issuance.py; `--hsm`
adds issuance by the same CA with its key in a SoftHSM2 token (issue 20).

In one run, on the same certificates and the same cores:
1. `iotdps up` (one process, one event loop; SQLite in its data dir, or a fresh PostgreSQL
   database) gets an enrollment group (X.509: a CA proven by proof of possession) and `n`
   devices per round register through its MQTT/TLS 1.2 endpoint with our device client (the
   code behind `iotdps simulate`): TCP connect, full mutual-TLS handshake, CONNECT, SUBSCRIBE,
   register, answer, `concurrency` devices at a time.
2. nginx (Debian's nginx-light; one worker process, as iotdps serves from one loop) with the
   iotdps server certificate and key, TLS 1.2 only, the same cipher suites, no session cache,
   no tickets, the device CA as client CA: the same client makes `n` bare handshakes with the
   same device credentials and concurrency, and closes each connection right away.

Both servers stay up and take turns, `--rounds` times: each is idle while the other is
measured, so a drift of the machine's speed (seen here: nginx alone moving by 20% between
identical runs) lands on both sides alike. The ratio printed last is the median of the rounds'.
Process layout: the server under test and this script (the load generator, one event loop;
`--clients K` forks more) share the machine's cores (2 on CI). Printed per round: rate,
p50/p99 latency, CPU per operation of the server (from /proc) and of the load generator (its
own process time). With `--store postgres` it also prints the database's CPU per
registration (the whole PostgreSQL server, from /proc) and the ceilings the shared cores set,
as shares of nginx's rate: the rate at which server, load generator and database together
would use every core, and the same with a server that spent only nginx's CPU per handshake.
Target: at least 70%. It prints; it never fails on a slow machine.

`--attestation tpm` measures something else, in one run on one server: symmetric-key
registrations (MQTT, a group, as above) and TPM registrations (HTTPS; `--tpms` software TPMs,
swtpm, each an individual enrollment) take turns, `--rounds` times, `-n` of each per round. A
TPM registration is two requests (the 401 challenge, then the answer with the TPM-signed SAS)
and costs the service two activation blobs (the challenge and the hub key: per blob two RSA-OAEP
encryptions, KDFa, AES-CFB and HMACs); the device's side is the TPM's ActivateCredential,
Import, Load and EvictControl, twice. Printed: rate, latency, the server's CPU per registration
of each kind and their ratio. Each TPM registers again and again (a reprovisioning), `--tpms`
at a time; the swtpm processes' CPU is the load generator's, not counted for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from iotdps.cli.local import LocalAdminClient
from iotdps.device.fleet import Fleet, create_fleet
from iotdps.device.simulate import PhaseStats, handshake_only, register_fleet
from iotdps.store import open_store

# Registrations (and nginx handshakes) before the first timed round, at the timed
# concurrency: they load the new CA into the TLS trust store and bring both servers and the
# load generator to their steady state (caches, the database file's first pages, allocator
# pools). With 10, the first round came out a few points lower than the later ones.
WARMUP = 200

# Set before forking the client processes; they inherit it (SSL contexts do not pickle).
_SHARED: dict[str, Any] = {}


def _timed(job: Any, items: list[Any]) -> tuple[PhaseStats, float]:
    """`job(items)` and the CPU seconds this process spent on it."""
    cpu0 = time.process_time()
    stats = job(items)
    return stats, time.process_time() - cpu0


def _client_part(part: tuple[int, int]) -> tuple[PhaseStats, float]:
    k, i = part
    return _timed(_SHARED["job"], _SHARED["items"][i::k])


def split_run(clients: int, items: list[Any], job: Any) -> tuple[PhaseStats, float]:
    """Run `job(slice)` in `clients` forked processes (or here, for 1): merged stats and the
    clients' CPU seconds. The rate is the total over the slowest process's time, as the
    processes start together."""
    if clients <= 1:
        return _timed(job, items)
    import multiprocessing

    _SHARED.update(job=job, items=items)
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.map(_client_part, [(clients, i) for i in range(clients)])
    merged = PhaseStats()
    for p, _ in results:
        merged.attempted += p.attempted
        merged.succeeded += p.succeeded
        merged.latencies += p.latencies
        merged.errors.update(p.errors)
        merged.elapsed = max(merged.elapsed, p.elapsed)
    return merged, sum(cpu for _, cpu in results)


async def prepare(server: h.Iotdps, attestation: Any, n: int, work: Path, warmup: int = WARMUP) -> tuple[str, Fleet]:
    """An enrollment for `attestation` and `n + warmup` devices with credentials."""
    store = await open_store(server.dsn, create=False)
    try:
        admin = LocalAdminClient(store)
        settings = await admin.get_settings()
        assert settings is not None
        fleet = await create_fleet(admin, attestation, n + warmup, work / "devices", server.server_ca)
        return settings.id_scope, fleet
    finally:
        await store.close()


def line(name: str, stats: PhaseStats, cpu: float, client_cpu: float, what: str, db_cpu: float | None = None) -> str:
    def per(seconds: float) -> float:
        return 1000 * seconds / stats.succeeded if stats.succeeded else 0.0

    database = f" database {per(db_cpu):5.2f} ms" if db_cpu is not None else ""
    return (
        f"{name:<10} {stats.succeeded:6d} {what:<14} {stats.rate:8.1f}/s   p50 {1000 * stats.percentile(50):7.1f} ms"
        f"   p99 {1000 * stats.percentile(99):7.1f} ms"
        f"   CPU/op server {per(cpu):5.2f} ms client {per(client_cpu):5.2f} ms{database}"
        f"   errors {dict(stats.errors) or 0}"
    )


def core_ceiling(stats: PhaseStats, server: float, others: float, ref: PhaseStats, ref_server: float) -> str:
    """The rate at which the CPU measured per registration would keep every core busy, as a
    share of nginx's rate: for all of it (server + load generator + database; no scheduling
    makes the run faster than this on these cores), then with the server costing only what
    nginx's worker spent per bare handshake, the ceiling for a server that did nothing but
    the handshake (no MQTT, no registration, no store work of its own)."""
    cores = len(os.sched_getaffinity(0))
    if not stats.succeeded or not ref.succeeded or ref.rate <= 0 or others <= 0:
        return "ceiling: not measured"
    others_per_op = others / stats.succeeded
    per_op = server / stats.succeeded + others_per_op
    handshake = ref_server / ref.succeeded
    whole = cores / per_op
    bare = cores / (handshake + others_per_op)
    return (
        f"ceiling: {cores} cores / {1000 * per_op:.2f} ms CPU per registration"
        f" (server + client + database) = {whole:.0f}/s = {100 * whole / ref.rate:.0f}% of nginx;"
        f" with a server that only shook hands (nginx's {1000 * handshake:.2f} ms): {100 * bare / ref.rate:.0f}%"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=600, help="registrations (and handshakes) per side and round")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of iotdps and nginx (default 3)")
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--attestation", choices=["x509", "symmetric-key", "tpm"], default="x509")
    ap.add_argument("--tpms", type=int, default=8, help="software TPMs for --attestation tpm (default 8)")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--clients", type=int, default=1, help="load-generator processes (default 1)")
    ap.add_argument("--csr", action="store_true", help="registrations with certificate issuance (bench/issuance.py)")
    ap.add_argument("--hsm", action="store_true", help="with --csr: also issue with the CA key in a SoftHSM2 token")
    args = ap.parse_args()
    if args.csr:
        main_csr(args)
        return
    n = max(1, min(args.n, 20_000))
    rounds = max(1, min(args.rounds, 20))
    if args.attestation == "tpm":
        tpm_main(n, rounds, max(1, min(args.tpms, 32)), args.concurrency)
        return
    print(
        f"registrations: {args.attestation}, store {args.store}, MQTT over TLS 1.2, concurrency {args.concurrency}, "
        f"{args.clients} client process(es), {rounds} round(s) of {n}, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )

    with h.temp_dir("iotdps-bench-reg-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        dsn = stack.enter_context(h.postgres_database()) if args.store == "postgres" else None
        server = stack.enter_context(h.iotdps_up(work, dsn=dsn))
        scope, fleet = asyncio.run(prepare(server, args.attestation, n * rounds, work))
        devices = fleet.devices
        # Not timed (see WARMUP).
        asyncio.run(register_fleet(server.address, 8883, scope, devices[:WARMUP], concurrency=args.concurrency))

        # Both servers stay up and take turns: each is idle while the other is measured, and
        # alternating rounds puts any drift of the machine's speed on both sides alike.
        tls = server.data_dir / "tls"
        client_ca = work / "devices" / "fleet-root.pem"
        if not client_ca.exists():  # symmetric keys: no device CA; nginx still asks for a certificate
            client_ca = tls / "server-ca.pem"
        nginx = stack.enter_context(h.nginx_tls(work, tls / "server.pem", tls / "server.key", client_ca))
        contexts = [d.context for d in devices[WARMUP:]]
        # The server name iotdps's certificate covers is the iotdps address; nginx listens elsewhere.
        asyncio.run(
            handshake_only(
                nginx.address,
                nginx.port,
                contexts[:WARMUP],
                WARMUP,
                concurrency=args.concurrency,
                server_hostname=server.address,
            )
        )
        per_client = max(1, args.concurrency // max(1, args.clients))

        def register(part: list[Any]) -> PhaseStats:
            return asyncio.run(register_fleet(server.address, 8883, scope, part, concurrency=per_client))[0]

        def handshakes(part: list[Any]) -> PhaseStats:
            return asyncio.run(
                handshake_only(
                    nginx.address, nginx.port, part, len(part), concurrency=per_client, server_hostname=server.address
                )
            )

        postmaster = h.postgres_postmaster() if dsn else None
        ratios: list[float] = []
        for r in range(rounds):
            ours = list(devices[WARMUP + r * n : WARMUP + (r + 1) * n])
            cpu0 = h.cpu_seconds(server.process.pid)
            db0 = h.postgres_cpu_seconds(postmaster) if postmaster else 0.0
            stats, client_cpu = split_run(args.clients, ours, register)
            ours_cpu = h.cpu_seconds(server.process.pid) - cpu0
            db_cpu = h.postgres_cpu_seconds(postmaster) - db0 if postmaster else None
            cpu0 = h.cpu_seconds(nginx.worker)
            ref, ref_client_cpu = split_run(args.clients, contexts[r * n : (r + 1) * n], handshakes)
            ref_cpu = h.cpu_seconds(nginx.worker) - cpu0
            ratio = stats.rate / ref.rate if ref.rate else 0.0
            ratios.append(ratio)
            print(line(f"{r + 1} iotdps", stats, ours_cpu, client_cpu, "registrations", db_cpu))
            print(line(f"{r + 1} nginx", ref, ref_cpu, ref_client_cpu, "handshakes"))
            if db_cpu is not None:
                print(f"{r + 1} {core_ceiling(stats, ours_cpu, client_cpu + db_cpu, ref, ref_cpu)}")
            print(f"{r + 1} ratio  {100 * ratio:.0f}%", flush=True)

    print(
        f"ratio  : iotdps registrations/s = {100 * statistics.median(ratios):.0f}% of nginx handshakes/s, "
        f"median of {rounds} round(s) ({', '.join(f'{100 * x:.0f}%' for x in ratios)}; target >= 70%)"
    )


def tpm_main(n: int, rounds: int, tpm_count: int, concurrency: int) -> None:
    """Symmetric-key (MQTT) and TPM (HTTPS, swtpm) registrations, taking turns on one server."""
    from iotdps.device.swtpm import SwtpmPool

    os.environ.setdefault("TSS2_LOG", "all+NONE")
    print(
        f"registrations: symmetric key (MQTT, concurrency {concurrency}) next to TPM (HTTPS, {tpm_count} swtpm), "
        f"SQLite, {rounds} round(s) of {n} each, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    with h.temp_dir("iotdps-bench-tpm-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        server = stack.enter_context(h.iotdps_up(work))
        pool = stack.enter_context(SwtpmPool(tpm_count, work / "tpms"))
        scope, sas_fleet = asyncio.run(prepare(server, "symmetric-key", n * rounds, work, warmup=WARMUP))

        async def tpm_fleet() -> Any:
            store = await open_store(server.dsn, create=False)
            try:
                return await create_fleet(
                    LocalAdminClient(store), "tpm", tpm_count, work / "tpm-devices", server.server_ca, tpms=pool.tpms
                )
            finally:
                await store.close()

        tpm_devices = asyncio.run(tpm_fleet()).devices
        sas_devices = sas_fleet.devices

        def tpm_registrations(count: int) -> PhaseStats:
            # Each TPM holds one challenge key at a time: a device is never in two registrations at
            # once, so the TPMs register in waves of `tpm_count`.
            merged, begin = PhaseStats(), time.perf_counter()
            while merged.attempted < count:
                wave = tpm_devices[: min(tpm_count, count - merged.attempted)]
                stats, _ = asyncio.run(register_fleet(server.address, 8883, scope, wave, concurrency=len(wave)))
                merged.attempted += stats.attempted
                merged.succeeded += stats.succeeded
                merged.latencies += stats.latencies
                merged.errors.update(stats.errors)
            merged.elapsed = time.perf_counter() - begin
            return merged

        # Not timed: warm both paths up.
        asyncio.run(register_fleet(server.address, 8883, scope, sas_devices[:WARMUP], concurrency=concurrency))
        tpm_registrations(2 * tpm_count)
        ratios: list[float] = []
        for r in range(rounds):
            ours = list(sas_devices[WARMUP + r * n : WARMUP + (r + 1) * n])
            cpu0, client0 = h.cpu_seconds(server.process.pid), time.process_time()
            sas = asyncio.run(register_fleet(server.address, 8883, scope, ours, concurrency=concurrency))[0]
            sas_cpu, sas_client = h.cpu_seconds(server.process.pid) - cpu0, time.process_time() - client0
            cpu0, client0 = h.cpu_seconds(server.process.pid), time.process_time()
            tpm = tpm_registrations(n)
            tpm_cpu, tpm_client = h.cpu_seconds(server.process.pid) - cpu0, time.process_time() - client0
            print(line(f"{r + 1} sym-key", sas, sas_cpu, sas_client, "registrations"))
            print(line(f"{r + 1} tpm", tpm, tpm_cpu, tpm_client, "registrations"))
            if sas.succeeded and tpm.succeeded:
                ratio = (tpm_cpu / tpm.succeeded) / (sas_cpu / sas.succeeded)
                ratios.append(ratio)
                print(f"{r + 1} server CPU per TPM registration = {ratio:.1f}x a symmetric-key one", flush=True)
    if ratios:
        print(
            f"ratio  : server CPU per TPM registration = {statistics.median(ratios):.1f}x symmetric key, "
            f"median of {len(ratios)} round(s)"
        )


def main_csr(args: argparse.Namespace) -> None:
    """X.509 registrations without and with a CSR, and openssl signing the same CSRs."""
    import issuance

    n = max(1, min(args.n, 20_000))
    rounds = max(1, min(args.rounds, 20))
    print(
        f"registrations with issuance: x509 group + local issuing CA, store {args.store}, MQTT over TLS 1.2, "
        f"concurrency {args.concurrency}, {rounds} round(s) of {n}, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    batches = 3 if args.hsm else 2
    with h.temp_dir("iotdps-bench-csr-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.hsm:
            issuance.token_environment(work)  # before `iotdps up`, which inherits it
        dsn = stack.enter_context(h.postgres_database()) if args.store == "postgres" else None
        server = stack.enter_context(h.iotdps_up(work, dsn=dsn))
        scope, fleet = asyncio.run(prepare(server, "x509", batches * n * rounds, work))
        ca = asyncio.run(issuance.enable_issuance(server, fleet, work))
        if args.hsm:
            asyncio.run(issuance.enable_token_issuance(server, ca))
        devices = fleet.devices
        warm = list(devices[:WARMUP])
        asyncio.run(
            register_fleet(
                server.address, 8883, scope, warm, concurrency=args.concurrency,
                csrs=issuance.csrs_for([d.registration_id for d in warm]),
            )
        )  # fmt: skip
        for r in range(rounds):
            base = WARMUP + batches * r * n
            plain, issuing = list(devices[base : base + n]), list(devices[base + n : base + 2 * n])
            csrs = issuance.csrs_for([d.registration_id for d in issuing])
            cpu0 = h.cpu_seconds(server.process.pid)
            stats, client_cpu = _timed(
                lambda part: asyncio.run(
                    register_fleet(server.address, 8883, scope, part, concurrency=args.concurrency)
                )[0],
                plain,
            )
            cpu1 = h.cpu_seconds(server.process.pid)
            with_csr, csr_client_cpu = _timed(
                lambda part, csrs=csrs: asyncio.run(
                    register_fleet(server.address, 8883, scope, part, concurrency=args.concurrency, csrs=csrs)
                )[0],
                issuing,
            )
            cpu2 = h.cpu_seconds(server.process.pid)
            signed, seconds = asyncio.run(issuance.openssl_signing(work, csrs, args.concurrency))
            print(line(f"{r + 1} x509", stats, cpu1 - cpu0, client_cpu, "registrations"))
            print(line(f"{r + 1} +csr", with_csr, cpu2 - cpu1, csr_client_cpu, "with issuance"))
            print(f"{r + 1} openssl {signed:6d} certificates   {signed / seconds:8.1f}/s   (one process per CSR)")
            print(
                f"{r + 1} ratio  issuance {100 * with_csr.rate / stats.rate if stats.rate else 0:.0f}% of plain x509;"
                f" {with_csr.rate / (signed / seconds) if signed else 0:.1f}x openssl's signing rate",
                flush=True,
            )
            if args.hsm:
                _token_round(args, server, scope, fleet, devices[base + 2 * n : base + 3 * n], with_csr, r)


def _token_round(
    args: argparse.Namespace, server: h.Iotdps, scope: str, fleet: Fleet, part: list[Any], file_key: PhaseStats, r: int
) -> None:
    """`part` registers with CSRs while the group's policy names the token-held twin of the CA."""
    import issuance

    asyncio.run(issuance.use_issuer(server, fleet, "bench-hsm-ca"))
    try:
        csrs = issuance.csrs_for([d.registration_id for d in part])
        cpu0 = h.cpu_seconds(server.process.pid)
        stats, client_cpu = _timed(
            lambda devices: asyncio.run(
                register_fleet(server.address, 8883, scope, devices, concurrency=args.concurrency, csrs=csrs)
            )[0],
            part,
        )
        cpu1 = h.cpu_seconds(server.process.pid)
    finally:
        asyncio.run(issuance.use_issuer(server, fleet, "bench-ca"))
    kind = asyncio.run(issuance.issued_by(server, part[-1].registration_id))
    assert kind == "pkcs11", f"the last device's certificate came from a {kind} issuing CA, not the token's"
    print(line(f"{r + 1} +csr hsm", stats, cpu1 - cpu0, client_cpu, "token issuance"))
    ratio = 100 * stats.rate / file_key.rate if file_key.rate else 0
    print(f"{r + 1} ratio  token-held CA issuance {ratio:.0f}% of the file-key CA's rate", flush=True)


if __name__ == "__main__":
    main()
