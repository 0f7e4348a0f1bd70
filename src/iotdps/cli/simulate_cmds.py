"""`iotdps simulate`: a fleet of simulated devices against a running iotdps.

    iotdps simulate --devices 200 --attestation x509 --concurrency 20 \
        [--then-telemetry RATE --duration S] [--dps-host H] [--port 8883]
    iotdps simulate --devices 4 --attestation tpm [--https-port 443]

With `--attestation tpm` every device gets its own software TPM (an `swtpm` process on
loopback, at most 32), an individual enrollment with that TPM's EK, and registers over HTTPS
(TPM is not offered over MQTT); its hub tokens are signed in its TPM.

Creates what the run needs (an enrollment group, and for X.509 a proven CA and minted device
certificates) on the local data dir by default, or through the management API with
`--server`/`--connection-string`; then registers every device through the DPS endpoint with
our device client (iotdps.device.simulate), and optionally connects them to their hubs and
sends telemetry. Prints registrations/s, p50/p99 latency, errors by kind and telemetry
messages/s; `--json` prints the same as one JSON document for scripts (bench/).

Loopback only: the DPS host must resolve to a 127.x address, so a typo cannot load-test
someone else's service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from iotdps.cli.target import open_client, target_options, target_params
from iotdps.device.credentials import TpmSigner
from iotdps.device.fleet import AttestationChoice, create_fleet
from iotdps.device.simulate import SimulationReport, register_fleet, run_telemetry
from iotdps.errors import InvalidInput, IotdpsError
from iotdps.paths import default_data_dir

__all__ = ["register"]

MAX_TPM_DEVICES = 32  # one swtpm process each: a handful proves the flow, not a load test


def _check_loopback(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise InvalidInput(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback:
            raise InvalidInput(f"{host} is not a loopback address; the simulator only loads this machine")


def _server_ca(params: dict[str, Any], ca_file: str | None) -> str:
    if ca_file:
        return Path(ca_file).read_text()
    if params.get("server_ca"):
        return Path(str(params["server_ca"])).read_text()
    data_dir = Path(str(params["data_dir"])) if params.get("data_dir") else default_data_dir()
    path = data_dir / "tls" / "server-ca.pem"
    try:
        return path.read_text()
    except OSError:
        raise InvalidInput(f"no server CA at {path}: pass --ca (the server CA `iotdps up` printed)") from None


def _print_report(report: SimulationReport, console: Console) -> None:
    reg = report.registration.to_json()
    table = Table(title="registrations", show_header=False)
    table.add_row("devices", str(reg["attempted"]))
    table.add_row("registered", str(reg["succeeded"]))
    table.add_row("failed", str(reg["failed"]))
    table.add_row("registrations/s", f"{reg['per_second']:.1f}")
    table.add_row("latency p50", f"{reg['p50_ms']:.1f} ms")
    table.add_row("latency p99", f"{reg['p99_ms']:.1f} ms")
    console.print(table)
    errors = dict(reg["errors"])
    tele = report.telemetry
    if tele is not None:
        for kind, n in tele.connect_errors.items():
            errors[f"hub connect: {kind}"] = errors.get(f"hub connect: {kind}", 0) + n
        for kind, n in tele.errors.items():
            errors[f"telemetry: {kind}"] = errors.get(f"telemetry: {kind}", 0) + n
        t = tele.to_json()
        ttable = Table(title="telemetry", show_header=False)
        ttable.add_row("connected", f"{t['connected']} of {t['devices']}")
        ttable.add_row("messages acknowledged", str(t["acknowledged"]))
        ttable.add_row("telemetry messages/s", f"{t['per_second']:.1f}")
        console.print(ttable)
    etable = Table(title="errors by kind")
    etable.add_column("kind")
    etable.add_column("count", justify="right")
    for kind, n in sorted(errors.items()):
        etable.add_row(kind, str(n))
    if not errors:
        etable.add_row("none", "0")
    console.print(etable)


@click.command("simulate")
@click.option("--devices", "count", type=click.IntRange(1, 100_000), default=10, show_default=True)
@click.option(
    "--attestation", type=click.Choice(["x509", "symmetric-key", "tpm"]), default="symmetric-key", show_default=True
)
@click.option("--concurrency", type=click.IntRange(1, 5000), default=10, show_default=True)
@click.option(
    "--then-telemetry",
    "rate",
    type=click.FloatRange(min=0),
    default=None,
    help="After registering: connect to the hubs, send this many messages/s per device (0: as fast as acknowledged).",
)
@click.option(
    "--duration", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, help="Telemetry seconds."
)
@click.option("--window", type=click.IntRange(1, 1000), default=16, show_default=True, help="QoS 1 in flight (rate 0).")
@click.option("--dps-host", default="localhost", show_default=True, help="DPS host name (a loopback name).")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True, help="MQTT port.")
@click.option("--https-port", type=click.IntRange(1, 65535), default=443, show_default=True, help="HTTPS port (TPM).")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, exists=True), help="Server CA (default: data dir).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Keep device credentials here.")
@click.option("--timeout", type=click.FloatRange(1, 600), default=30.0, show_default=True, help="Per registration.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@target_options
def simulate_command(
    count: int,
    attestation: AttestationChoice,
    concurrency: int,
    rate: float | None,
    duration: float,
    window: int,
    dps_host: str,
    port: int,
    https_port: int,
    ca_file: str | None,
    work_dir: Path | None,
    timeout: float,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Register a fleet of simulated devices (and optionally send telemetry); print the rates."""
    _check_loopback(dps_host)
    if attestation == "tpm" and count > MAX_TPM_DEVICES:
        raise InvalidInput(f"--attestation tpm runs one swtpm per device: at most {MAX_TPM_DEVICES} devices")
    params = target_params()
    ca_pem = _server_ca(params, ca_file)
    console = Console(stderr=as_json)
    show = not no_progress and not as_json and console.is_terminal

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )

    def tick(description: str, total: int | None) -> Callable[[int], None] | None:
        """A progress callback for a new bar row, or None without a progress bar."""
        if not show:
            return None
        task = bar.add_task(description, total=total)
        return lambda n: bar.advance(task, n)

    fleet_info: dict[str, Any] = {}

    async def go(work: Path, tpms: Sequence[TpmSigner]) -> SimulationReport:
        async with open_client(params) as client:
            settings = await client.get_settings()
            if settings is None:
                raise InvalidInput("the service has no ID scope yet: start `iotdps up` once first")
            fleet = await create_fleet(
                client, attestation, count, work, ca_pem, on_progress=tick("credentials", count), tpms=tpms
            )
        stats, assignments = await register_fleet(
            dps_host,
            port,
            settings.id_scope,
            fleet.devices,
            concurrency=concurrency,
            timeout=timeout,
            on_progress=tick("registering", count),
            https_port=https_port,
        )
        report = SimulationReport(stats, assignments)
        fleet_info.update(attestation=fleet.attestation, prefix=fleet.prefix, group=fleet.group_id, ca=fleet.ca_name)
        if rate is not None and assignments:
            report.telemetry = await run_telemetry(
                fleet.devices,
                assignments,
                port=port,
                concurrency=concurrency,
                rate=rate,
                duration=duration,
                window=window,
                on_connect_progress=tick("connecting to hubs", len(assignments)),
                on_progress=tick("telemetry messages", None),
            )
        return report

    def run(work: Path) -> SimulationReport:
        if attestation != "tpm":
            return asyncio.run(go(work, ()))
        # Imported here: only TPM fleets need tpm2-pytss (the tpm extra) and swtpm.
        from iotdps.device.swtpm import SwtpmPool

        os.environ.setdefault("TSS2_LOG", "all+NONE")  # libtss2's own stderr lines; errors are ours
        with SwtpmPool(count, work / "tpms") as pool:
            return asyncio.run(go(work, pool.tpms))

    progress: AbstractContextManager[Any] = bar if show else nullcontext()
    try:
        with progress:
            if work_dir is not None:
                report = run(work_dir)
            else:
                with tempfile.TemporaryDirectory(prefix="iotdps-sim-") as tmp:
                    report = run(Path(tmp))
    except IotdpsError:
        raise
    except OSError as exc:
        raise InvalidInput(f"simulate failed: {type(exc).__name__}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps({**report.to_json(), "fleet": fleet_info}, sort_keys=True))
    else:
        _print_report(report, console)
    failures = _failures(report)
    if failures:
        # The report is printed either way; the exit status is what a script or CI checks.
        click.echo(f"error: {'; '.join(failures)}", err=True)
        sys.exit(EXIT_DEVICES_FAILED)


# Not bad input (2): the run worked and found devices that did not get through.
EXIT_DEVICES_FAILED = 1


def _failures(report: SimulationReport) -> list[str]:
    """What went wrong for the fleet, in words; empty when every device got through."""
    failures: list[str] = []
    registration = report.registration
    if registration.succeeded < registration.attempted:
        failures.append(
            f"{registration.attempted - registration.succeeded} of {registration.attempted} devices failed to register"
        )
    telemetry = report.telemetry
    if telemetry is not None and telemetry.connected < telemetry.devices:
        failures.append(
            f"{telemetry.devices - telemetry.connected} of {telemetry.devices} devices could not connect to their hub"
        )
    return failures


def register(group: click.Group) -> None:
    group.add_command(simulate_command)
