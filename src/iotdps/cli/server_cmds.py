"""`iotdps up`: run the service in the foreground until SIGINT or SIGTERM.

The server (and with it the store, the management API and aiohttp) is imported when `up`
runs, not when this module is: `iotdps up --help` and every other command start without it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from iotdps.config import Config, load_config
from iotdps.fsutil import open_to_others

# Standard library only: cheap at startup, and --log-format's choices come from it.
from iotdps.logformat import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from iotdps.wiring.node import StartupInfo

__all__ = ["register"]

log = logging.getLogger("iotdps.up")


def _redacted(connection_string: str) -> str:
    """The connection string with its key replaced by where to find it."""
    from iotdps.access import POLICIES_FILE

    parts = [p for p in connection_string.split(";") if not p.startswith("SharedAccessKey=")]
    return ";".join([*parts, f"SharedAccessKey=<primaryKey in {POLICIES_FILE}>"])


def _banner(
    info: StartupInfo, policies_file: Path, *, interactive: bool, command: str = "iotdps", target: str = ""
) -> str:
    """What `iotdps up` prints once it listens. New management keys are shown only when
    `interactive` (standard output is a terminal): under a service manager or with output
    redirected, standard output is a log, and a log must not hold the owner key. Then the
    banner names the 0600 file that holds them and the connection strings without their keys.
    `command`: how the first-start hint's commands run (cli/invocation.py); `target`: the
    options that point them at this server's data dir."""
    from iotdps.wiring.node import device_snippet

    lines = ["iotdps is up", ""]
    lines += [f"  listening    {e}" for e in info.endpoints]
    lines += [
        f"  DPS host     {info.dps_host}   (devices: provisioning_host / global endpoint)",
        f"  ID scope     {info.id_scope}",
    ]
    if info.server_ca is not None:
        lines.append(f"  server CA    {info.server_ca}   (give this file to devices as their trust anchor)")
    lines += [f"  note         {n}" for n in info.notes]
    if info.connection_strings and interactive:
        lines += ["", f"Management API credentials (shown once, on this terminal only; kept in {policies_file}):"]
        lines += [f"  {name:26} {value}" for name, value in info.connection_strings.items()]
    elif info.connection_strings:
        lines += [
            "",
            f"Management API credentials: new access policies in {policies_file} (mode 0600, owner only).",
            "Their keys are not printed here, because standard output is not a terminal. Connection strings:",
        ]
        lines += [f"  {name:26} {_redacted(value)}" for name, value in info.connection_strings.items()]
    if info.first_start:
        lines += [
            "",
            "First start. Enroll a device, then provision it with the official Azure SDK:",
            "",
            f"  {command} enrollment create my-device --symmetric-key{target}",
            f"  {command} enrollment show my-device --primary-key{target} > device.key",
            "",
        ]
        lines += ["    " + line for line in device_snippet(info).splitlines()]
    return "\n".join(lines)


def _settle_gc() -> None:
    """Tune the cyclic garbage collector for a long-running server, once start-up is done.

    Everything start-up built (modules, table metadata, TLS contexts, caches) lives as long as
    the process, so it is frozen out of the collector's sight; and young collections run every
    20,000 net allocations instead of 700: a registration allocates thousands of short-lived
    objects, nearly all freed by reference counting, and collecting every 700 made the
    collector a few percent of the server's CPU under load (bench/PROFILE.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _hint_command(config: Config) -> tuple[str, str]:
    """The command the banner's hints use, and the options that point it at this server's data
    dir (none for the default one): runnable as printed."""
    import shlex

    from iotdps.cli.invocation import runnable_command
    from iotdps.config import default_data_dir

    target = ""
    if config.data_dir.expanduser().resolve() != default_data_dir().resolve():
        target = f" --data-dir {shlex.quote(str(config.data_dir))}"
    return runnable_command(), target


async def _run(config: Config) -> None:
    from iotdps.access import POLICIES_FILE
    from iotdps.wiring.node import Server

    server = Server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shared = open_to_others(config.data_dir)
    if shared:
        log.warning(
            "the data directory %s is open to other users (group/other bits %03o): it holds the database, "
            "the TLS keys and the access policies; run chmod 700 on it",
            config.data_dir,
            shared,
        )
    try:
        info = await server.start()
        _settle_gc()
        interactive = sys.stdout.isatty()
        command, target = _hint_command(config)
        banner = _banner(info, config.data_dir / POLICIES_FILE, interactive=interactive, command=command, target=target)
        click.echo(banner, err=False)
        # The banner is for a person; log pipelines (--log-format json) get the same news as a record.
        log.info("iotdps is up: %s", "; ".join(info.endpoints), extra={"event": "started"})
        await stop.wait()
        click.echo("iotdps: shutting down", err=True)
    finally:
        await server.stop()


@click.command("up")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="TOML settings file.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory [env IOTDPS_DATA_DIR].")
@click.option("--dsn", help="Database URL [env IOTDPS_DSN]; default SQLite in the data directory.")
@click.option("--dps-host", help="Host name devices use for the DPS [env IOTDPS_DPS_HOST].")
@click.option("--bind", help="Address of the DPS listeners (and by default the management API) [env IOTDPS_DPS_BIND].")
@click.option("--mqtt-port", type=int, help="DPS MQTT port (default 8883) [env IOTDPS_MQTT_PORT].")
@click.option("--https-port", type=int, help="DPS HTTPS and websocket port (default 443) [env IOTDPS_HTTPS_PORT].")
@click.option("--management-bind", help="Address of the management API (default: --bind) [env IOTDPS_MANAGEMENT_BIND].")
@click.option("--management-port", type=int, help="Management API port (default 8443) [env IOTDPS_MANAGEMENT_PORT].")
@click.option("--hub-mqtt-port", type=int, help="Hubs' MQTT port (default: the DPS's) [env IOTDPS_HUB_MQTT_PORT].")
@click.option(
    "--hub-websocket-port",
    type=int,
    help="Hubs' websocket port (default: the DPS HTTPS port) [env IOTDPS_HUB_WEBSOCKET_PORT].",
)
@click.option("--nats", "nats_url", help="NATS URL for hub operations across nodes [env IOTDPS_NATS_URL].")
@click.option("--node-id", help="This node's name in a cluster [env IOTDPS_NODE_ID]; default: random per start.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve /metrics on this port too; 0: only on the management port [env IOTDPS_METRICS_PORT].",
)
@click.option("--metrics-bind", help="Address of the metrics port; default: management's [env IOTDPS_METRICS_BIND].")
@click.option(
    "--crl-port",
    type=click.IntRange(0, 65535),
    help="Plain-HTTP CRL distribution point port; 0: off (default) [env IOTDPS_CRL_PORT].",
)
@click.option("--crl-bind", help="Address of the CRL distribution point (default 127.0.0.1) [env IOTDPS_CRL_BIND].")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--log-format",
    default="text",
    envvar="IOTDPS_LOG_FORMAT",
    type=click.Choice(LOG_FORMATS),
    help="text lines, or one JSON object per line [env IOTDPS_LOG_FORMAT].",
)
def up_cmd(
    config_path: Path | None,
    data_dir: Path | None,
    dsn: str | None,
    dps_host: str | None,
    bind: str | None,
    nats_url: str | None,
    node_id: str | None,
    metrics_port: int | None,
    metrics_bind: str | None,
    crl_port: int | None,
    crl_bind: str | None,
    mqtt_port: int | None,
    https_port: int | None,
    management_bind: str | None,
    management_port: int | None,
    hub_mqtt_port: int | None,
    hub_websocket_port: int | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run the provisioning service (and its hubs) until interrupted."""
    configure_logging(log_level, log_format)
    if log_level != "debug":
        # Alembic announces its plugins and every migration at INFO, a dozen lines before the
        # banner on a first start: noise for an operator, kept for --log-level debug.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    overrides = {
        "data_dir": str(data_dir) if data_dir else None,
        "dsn": dsn,
        "dps.host_name": dps_host,
        "dps.bind": bind,
        "cluster.nats_url": nats_url,
        "cluster.node_id": node_id,
        "metrics.port": metrics_port,
        "metrics.bind": metrics_bind,
        "crl.port": crl_port,
        "crl.bind": crl_bind,
        "dps.mqtt_port": mqtt_port,
        "dps.https_port": https_port,
        "management.bind": management_bind,
        "management.port": management_port,
        "hub_ports.mqtt": hub_mqtt_port,
        "hub_ports.websocket": hub_websocket_port,
    }
    config = load_config(config_path, overrides=overrides)
    asyncio.run(_run(config))


def register(group: click.Group) -> None:
    group.add_command(up_cmd)
