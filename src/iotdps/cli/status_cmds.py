"""`iotdps status`: is a server running on this data dir, and what it serves.

    server       running (its pid) or not: the control socket answers, and the kernel names the
                 process at its other end (SO_PEERCRED), so a stale socket file reads as "not running"
    hubs         every linked hub, and whether the running server serves it (a hub nobody
                 serves gets no device connections: allocation to it strands devices)
    connections  devices connected to the server's hubs now
    registrations  records written in the last minute

Exit code 0 when a server runs on the data dir, 1 when none does (cli.output's "checked, and
the answer is no"). Read-only: the store is only read, the server only asked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import struct
from pathlib import Path
from typing import Any

import click

from iotdps.cli.output import EXIT_NEGATIVE, echo_json, json_option, table, wants_json
from iotdps.cli.target import local_dsn, store_options, target_params
from iotdps.errors import IotdpsError

__all__ = ["register"]

_RECENT = dt.timedelta(minutes=1)


def _peer_pid(path: Path) -> int | None:
    """The pid of the process listening on the unix socket `path`, or None when nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


async def _gather(data_dir: Path, dsn: str) -> dict[str, Any]:
    from iotdps.server.control import ControlClient, control_socket_path
    from iotdps.store import open_store

    doc: dict[str, Any] = {
        "dataDir": str(data_dir),
        "running": False,
        "pid": None,
        "connections": None,
        "endpoints": [],
    }
    served: set[str] = set()
    path = control_socket_path(data_dir)
    pid = _peer_pid(path) if path.exists() else None
    if pid is not None:
        try:
            answer = await ControlClient(path).call("GET", "/hubs")
        except IotdpsError:
            answer = None
        if isinstance(answer, dict):
            endpoints = answer.get("endpoints")
            doc.update(
                running=True,
                pid=pid,
                connections=answer.get("connections"),
                endpoints=[str(e) for e in endpoints] if isinstance(endpoints, list) else [],
            )
            served = {str(h).lower() for h in answer.get("hubs", [])}
    store = await open_store(dsn)
    try:
        async with store.begin() as uow:
            linked = list(await uow.hubs.list())
            since = dt.datetime.now(dt.UTC) - _RECENT
            recent = 0
            continuation: str | None = None
            for _ in range(100_000):  # bounded paging
                page = await uow.registrations.list(500, continuation)
                recent += sum(1 for r in page.items if r.updated is not None and r.updated >= since)
                continuation = page.continuation
                if continuation is None:
                    break
    finally:
        await store.close()
    doc["hubs"] = [
        {"hostName": h.host_name, "served": h.host_name.lower() in served if doc["running"] else None} for h in linked
    ]
    doc["registrationsLastMinute"] = recent
    return doc


@click.command("status")
@json_option
@store_options
def status_cmd() -> None:
    """Is a server running on this data dir: its pid, hubs served, connections, recent registrations."""
    from iotdps.paths import default_data_dir

    params = target_params()
    data_dir = Path(params["data_dir"]) if params.get("data_dir") else default_data_dir()
    doc = asyncio.run(_gather(data_dir, local_dsn(params)))
    if wants_json():
        echo_json(doc)
    else:
        state = f"running (pid {doc['pid']})" if doc["running"] else "not running"
        click.echo(f"server        {state} on {data_dir}")
        if doc["running"]:
            for n, endpoint in enumerate(doc["endpoints"]):
                click.echo(f"{'endpoints' if n == 0 else '':<13} {endpoint}")
            click.echo(f"connections   {doc['connections']}")
        click.echo(f"registrations {doc['registrationsLastMinute']} in the last minute")
        rows = [[h["hostName"], {True: "yes", False: "NO: no running node serves it", None: "-"}[h["served"]]]
                for h in doc["hubs"]]  # fmt: skip
        table("Linked hubs", ["hub", "served"], rows)
    if not doc["running"]:
        raise SystemExit(EXIT_NEGATIVE)


def register(group: click.Group) -> None:
    group.add_command(status_cmd)
