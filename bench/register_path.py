"""The registration pipeline without the network: what the store and the core cost per device.

    python bench/register_path.py [-n 1000] [--dsn postgresql+asyncpg://...] [--profile out.txt]

Runs what the MQTT edge runs for one register call (ProvisioningService.authenticate at
CONNECT, then register with that authentication) for `n` fresh devices of a symmetric-key
group, one after the other, in this process, on a fresh SQLite store (or --dsn). Prints the
CPU time per registration and the SQL statements and transactions per registration. This is
the number the profiling notes in bench/PROFILE.md track; --profile writes a cProfile summary.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import Engine, event

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor
from iotdps.enrollment.models import EnrollmentGroup
from iotdps.evidence import SasCredential
from iotdps.provisioning.admin import put_group
from iotdps.provisioning.registration import RegistrationRequest
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.sas import derive_device_key, make_sas_token
from iotdps.secret import Secret
from iotdps.store import SqlStore, open_store


async def run(n: int, dsn: str, profile: Path | None) -> None:
    store = await open_store(dsn)
    statements = [0]
    transactions = [0]
    if isinstance(store, SqlStore) and isinstance(store.engine, Engine):
        # SQLite: the store hands most statements to sqlite3 directly; sqlite3 sees them all.
        def _trace(sql: str) -> None:
            word = sql.split(None, 1)[0].upper()
            if word == "BEGIN":
                transactions[0] += 1
            elif word not in ("COMMIT", "ROLLBACK", "PRAGMA"):
                statements[0] += 1

        store.engine.raw_connection().driver_connection.set_trace_callback(_trace)  # type: ignore[union-attr]
    elif isinstance(store, SqlStore):
        # PostgreSQL: most statements go to asyncpg directly; its query logger sees them all.
        def _log(query: Any) -> None:
            if query.query.split(None, 1)[0].upper().rstrip(";") not in ("BEGIN", "COMMIT", "ROLLBACK"):
                statements[0] += 1

        @event.listens_for(store.engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_query_logger(_log)

        @event.listens_for(store.engine.sync_engine, "begin")
        def _count_tx(*_: Any) -> None:
            transactions[0] += 1

        await store.engine.dispose()  # new connections, with the logger

    try:
        async with store.begin() as uow:
            await uow.settings.put(ServiceSettings("0ne00BENCH0"))
            await uow.hubs.put(LinkedHub("hub.bench.local", 1, True))
        group = await put_group(
            store,
            EnrollmentGroup.from_json({"enrollmentGroupId": "bench", "attestation": {"type": "symmetricKey"}}),
            actor=Actor("local", "bench"),
        )
        assert group.attestation.symmetric_key is not None
        key = group.attestation.symmetric_key.primary_key.reveal()
        service = ProvisioningService(store)
        expiry = int(time.time()) + 3600
        creds = [
            SasCredential(Secret(make_sas_token("0ne00BENCH0", f"dev-{i}", derive_device_key(key, f"dev-{i}"), expiry)))
            for i in range(n)
        ]

        async def one(i: int) -> None:
            rid = f"dev-{i}"
            auth = await service.authenticate("0ne00BENCH0", rid, creds[i])
            outcome = await service.register(RegistrationRequest("0ne00BENCH0", rid, creds[i], authentication=auth))
            assert outcome.status == "assigned", outcome

        for i in range(min(20, n)):  # warm the statement caches
            await one(i)
        statements[0] = transactions[0] = 0
        start_cpu, start = time.process_time(), time.perf_counter()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        for i in range(20, n):
            await one(i)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
        done = n - 20
        print(
            f"{done} registrations: {1000 * cpu / done:.2f} ms CPU and {1000 * wall / done:.2f} ms wall each "
            f"({done / wall:.0f}/s sequential); {statements[0] / done:.1f} SQL statements and "
            f"{transactions[0] / done:.1f} transactions per registration ({store!r})"
        )
        if profiler and profile:
            out = io.StringIO()
            sort = "tottime" if "tottime" in profile.name else "cumulative"
            pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(60)
            profile.write_text(out.getvalue())
            print(f"profile: {profile}")
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--dsn", default=None, help="store DSN (default: SQLite in a temporary directory)")
    ap.add_argument("--profile", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotdps-regpath-") as tmp:
        dsn = args.dsn or f"sqlite:///{Path(tmp) / 'iotdps.db'}"
        asyncio.run(run(max(args.n, 40), dsn, args.profile))


if __name__ == "__main__":
    main()
