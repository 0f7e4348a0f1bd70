"""Hub commands: the device registry, telemetry, twin, direct methods, cloud-to-device.

Registry and telemetry commands read the store directly (they work with or without a running
server; `telemetry tail` polls the store, so it follows a server in another process). Direct
methods need the device's live connection, so `method invoke` goes through the running
server's control socket (`<data_dir>/control.sock`). `twin update-desired` and `c2d send` use
the socket when a server runs (the device gets the change at once) and otherwise write the
store, and the device gets it when it next connects.

With `--server` / `--connection-string` (cli.target), `device list`, `telemetry tail`, `twin`,
`method invoke` and `c2d send` go to that server's hub service API instead (cli.remote_hub),
printing what they print locally.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from iotdps.cli.output import json_option, listing
from iotdps.cli.target import server_target, store_options, target_options, target_params
from iotdps.errors import InvalidInput, NotFound
from iotdps.jsonload import load_json
from iotdps.ports import HubStore, Store

if TYPE_CHECKING:
    from iotdps.cli.remote_hub import RemoteHub
    from iotdps.cli.server_target import ServerTarget
    from iotdps.hub.records import TelemetryMessage
    from iotdps.server.control import ControlClient

__all__ = ["register", "store_options"]

T = TypeVar("T")
_POLL_MIN, _POLL_MAX = 0.2, 2.0


def _data_dir() -> Path:
    from iotdps.paths import default_data_dir

    params = click.get_current_context().find_root().obj or {}
    return Path(params["data_dir"]) if params.get("data_dir") else default_data_dir()


def _dsn() -> str:
    from iotdps.paths import default_dsn

    params = click.get_current_context().find_root().obj or {}
    return str(params["dsn"]) if params.get("dsn") else default_dsn(_data_dir())


def _with_store(fn: Callable[[Store], Awaitable[T]]) -> T:
    dsn = _dsn()

    async def go() -> T:
        from iotdps.store import open_store

        store = await open_store(dsn)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _known_hub(store: Store, hub: str) -> None:
    """Refuse a hub name that names nothing: not linked and no device on it (a typo must not
    read as a hub with no traffic)."""
    async with store.begin() as uow:
        linked = [h.host_name for h in await uow.hubs.list()]
        if any(name.lower() == hub.lower() for name in linked):
            return
        if (await uow.devices.list(hub, page_size=1)).items:
            return
    known = ", ".join(sorted(linked)) or "none"
    raise NotFound(f"hub {hub} is not linked (linked hubs: {known})")


def _control() -> ControlClient | None:
    # The hub package (and aiohttp, the control socket's client) only for the commands that
    # talk to a running server: registry and telemetry commands start without them.
    from iotdps.server.control import ControlClient, control_socket_path

    path = control_socket_path(_data_dir())
    return ControlClient(path) if path.exists() else None


def _echo(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def _properties(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"property {pair!r} is not key=value")
        out[key] = value
    return out


def _json_option(text: str | None, what: str) -> Any:
    if text is None:
        return None
    return load_json(text, what=what)  # InvalidJson, an InvalidInput: one `error:` line


def _hub_opts(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--device", "device_id", required=True, help="Device id.")(f)
    f = click.option("--hub", required=True, help="Hub host name.")(f)
    return store_options(f)


def _remote_hub_opts(f: Callable[..., Any]) -> Callable[..., Any]:
    """--hub, --device and the target options: the command also runs against a server."""
    f = click.option("--device", "device_id", required=True, help="Device id.")(f)
    f = click.option("--hub", required=True, help="Hub host name.")(f)
    return target_options(f)


def _server() -> ServerTarget | None:
    """The server the command's --server/--connection-string name, or None (local)."""
    return server_target(target_params())


def _on_server(target: ServerTarget, hub: str, fn: Callable[[RemoteHub], Awaitable[T]]) -> T:
    # Imported here: aiohttp and the token signer only for --server.
    from iotdps.cli.remote_hub import RemoteHub

    async def go() -> T:
        remote = RemoteHub(target, hub)
        try:
            return await fn(remote)
        finally:
            await remote.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------- device registry


@click.group("device")
def device_group() -> None:
    """Devices registered on a hub (and `device run`: our device client)."""


@device_group.command("list")
@click.option("--hub", required=True, help="Hub host name.")
@json_option
@target_options
def device_list(hub: str) -> None:
    target = _server()
    if target is not None:
        docs, cut = _on_server(target, hub, lambda remote: remote.list_devices())
        rows = [[d["deviceId"], d["status"], d["auth"]] for d in docs]
        listing(f"Devices on {hub}", ["device id", "status", "auth"], rows, docs)
        if cut:
            click.echo(f"note: the server answers at most {len(docs)} devices; more may exist", err=True)
        return

    async def go(store: Store) -> list[dict[str, Any]]:
        await _known_hub(store, hub)
        out: list[dict[str, Any]] = []
        continuation: str | None = None
        for _ in range(100_000):
            async with store.begin() as uow:
                page = await uow.devices.list(hub, page_size=500, continuation=continuation)
            out += [{"deviceId": d.device_id, "status": d.status, "auth": d.auth.type} for d in page.items]
            continuation = page.continuation
            if continuation is None:
                break
        return out

    docs = _with_store(go)
    rows = [[d["deviceId"], d["status"], d["auth"]] for d in docs]
    listing(f"Devices on {hub}", ["device id", "status", "auth"], rows, docs)


def _device_doc(hub: str, device_id: str) -> dict[str, Any]:
    from iotdps.hub.twin import device_twin_json  # the hub package loads its runtime with it

    async def go(store: Store) -> dict[str, Any]:
        async with store.begin() as uow:
            device = await uow.devices.get(hub, device_id)
            if device is None:
                raise NotFound(f"device {device_id} not found on {hub}")
        auth = device.auth
        return {
            "deviceId": device.device_id,
            "hub": device.hub,
            "status": device.status,
            "etag": device.etag,
            "registrationId": device.registration_id,
            "capabilities": {"iotEdge": device.iot_edge},
            "authentication": {
                "type": auth.type,
                # Keys are secrets: only say whether they are there.
                "symmetricKey": {"primaryKey": bool(auth.primary_key), "secondaryKey": bool(auth.secondary_key)},
                "x509Thumbprint": {
                    "primaryThumbprints": list(auth.primary_thumbprints),
                    "secondaryThumbprints": list(auth.secondary_thumbprints),
                },
                # The certificate the service issued at registration (README "Certificates
                # issued at registration"), accepted beside the credential above.
                "issuedThumbprints": list(auth.issued_thumbprints),
            },
            "twin": device_twin_json(device),
        }

    return _with_store(go)


@device_group.command("show")
@_hub_opts
def device_show(hub: str, device_id: str) -> None:
    _echo(_device_doc(hub, device_id))


def _set_status(hub: str, device_id: str, status: str) -> None:
    from dataclasses import replace

    from iotdps.cli.actor import local_actor
    from iotdps.hub.audit import record_identity

    async def go(store: Store) -> None:
        async with cast(HubStore, store).begin() as uow:
            device = await uow.devices.get(hub, device_id)
            if device is None:
                raise NotFound(f"device {device_id} not found on {hub}")
            saved = await uow.devices.put(replace(device, status=status), if_match=device.etag)  # type: ignore[arg-type]
            await record_identity(uow, local_actor(), "hub-device.update", device, saved)

    _with_store(go)


def _kick(hub: str, device_id: str) -> None:
    """Drop the device's live connection, if a server runs (a disabled device must go now)."""
    control = _control()
    if control is not None:
        asyncio.run(control.call("POST", control.device_path(hub, device_id, "disconnect")))


@device_group.command("disable")
@_hub_opts
def device_disable(hub: str, device_id: str) -> None:
    _set_status(hub, device_id, "disabled")
    _kick(hub, device_id)
    click.echo(f"device {device_id} disabled on {hub}")


@device_group.command("enable")
@_hub_opts
def device_enable(hub: str, device_id: str) -> None:
    _set_status(hub, device_id, "enabled")
    click.echo(f"device {device_id} enabled on {hub}")


@device_group.command("delete")
@_hub_opts
def device_delete(hub: str, device_id: str) -> None:
    from iotdps.cli.actor import local_actor
    from iotdps.hub.audit import record_identity

    async def go(store: Store) -> None:
        hub_store = cast(HubStore, store)
        async with hub_store.begin() as uow:
            stored = await uow.devices.get(hub, device_id)
            if stored is None:
                raise NotFound(f"device {device_id} not found on {hub}")
            await uow.devices.delete(hub, device_id, if_match=stored.etag)
            await uow.c2d.purge(hub, device_id)
            await uow.hub_sessions.delete(hub, device_id)
            await record_identity(uow, local_actor(), "hub-device.delete", stored, None)

    _with_store(go)
    _kick(hub, device_id)
    click.echo(f"device {device_id} deleted from {hub}")


# --------------------------------------------------------------------------- telemetry


def _telemetry_line(m: TelemetryMessage) -> str:
    doc: dict[str, Any] = {
        "seq": m.seq,
        "enqueuedTime": m.enqueued.isoformat(),
        "deviceId": m.device_id,
        "systemProperties": dict(m.system_properties),
        "properties": dict(m.application_properties),
    }
    try:
        doc["body"] = m.body.decode("utf-8")
    except UnicodeDecodeError:
        doc["bodyBase64"] = base64.b64encode(m.body).decode("ascii")
    return json.dumps(doc, sort_keys=True)


@click.group("telemetry")
def telemetry_group() -> None:
    """Device-to-cloud messages stored by the hub."""


Lines = list[tuple[int, str]]  # (sequence number, the printed line), oldest first


async def _tail(
    recent: Callable[[], Awaitable[Lines]],
    after: Callable[[int], Awaitable[Lines]],
    start: Callable[[], Awaitable[int]],
    follow: bool,
    duration: float | None,
) -> None:
    """Print `recent()`, then, with `follow`, poll `after(last seq)` until `duration` is up.
    `start()`: where to follow from when there was nothing recent."""
    last: int | None = None
    for seq, line in await recent():
        click.echo(line)
        last = seq
    if not follow:
        return
    if last is None:
        last = await start()
    deadline = None if duration is None else time.monotonic() + duration
    delay = _POLL_MIN
    while deadline is None or time.monotonic() < deadline:
        fresh = await after(last)
        for seq, line in fresh:
            click.echo(line)
            last = seq
        # Poll quickly while messages flow, back off (bounded) while idle.
        delay = _POLL_MIN if fresh else min(_POLL_MAX, delay * 1.5)
        pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
        await asyncio.sleep(pause)


@telemetry_group.command("tail")
@click.option("--hub", required=True, help="Hub host name.")
@click.option("--device", "device_id", help="Only this device.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep printing new messages.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Messages shown first.")
@click.option("--for", "duration", type=click.FloatRange(min=0), help="Stop following after this many seconds.")
@target_options
def telemetry_tail(hub: str, device_id: str | None, follow: bool, limit: int, duration: float | None) -> None:
    """One JSON line per message, oldest first; with --follow, new ones as they are stored."""
    target = _server()
    if target is not None:

        async def remote_tail(remote: RemoteHub) -> None:
            async def lines(after: int | None, count: int) -> Lines:
                docs = await remote.events(device_id, after=after, limit=count)
                return [(int(d["seq"]), json.dumps(d, sort_keys=True)) for d in docs]

            async def from_zero() -> int:
                # Nothing recent: this device (or hub) has no message yet, so all are new.
                return 0

            await _tail(lambda: lines(None, limit), lambda last: lines(last, 1000), from_zero, follow, duration)

        _on_server(target, hub, remote_tail)
        return

    async def go(store: Store) -> None:
        await _known_hub(store, hub)
        hub_store = cast(HubStore, store)

        async def lines(after: int | None, count: int) -> Lines:
            async with hub_store.begin() as uow:
                found = await uow.telemetry.list(hub, device_id, after=after, limit=count, newest=after is None)
            return [(m.seq or 0, _telemetry_line(m)) for m in found]

        async def newest_of_hub() -> int:
            async with hub_store.begin() as uow:
                newest = await uow.telemetry.list(hub, None, limit=1, newest=True)
            return (newest[-1].seq or 0) if newest else 0

        await _tail(lambda: lines(None, limit), lambda last: lines(last, 1000), newest_of_hub, follow, duration)

    _with_store(go)


# --------------------------------------------------------------------------- twin, methods, C2D


@click.group("twin")
def twin_group() -> None:
    """Device twins on a hub."""


@twin_group.command("show")
@_remote_hub_opts
def twin_show(hub: str, device_id: str) -> None:
    target = _server()
    if target is not None:
        _echo(_on_server(target, hub, lambda remote: remote.twin(device_id)))
        return
    _echo(_device_doc(hub, device_id)["twin"])


@twin_group.command("update-desired")
@_remote_hub_opts
@click.option("--patch", "patch_text", required=True, help="JSON object merged into the desired properties.")
@click.option("--if-match", help="Only if the etag `twin show` printed is still the twin's.")
def twin_update_desired(hub: str, device_id: str, patch_text: str, if_match: str | None) -> None:
    patch = _json_option(patch_text, "--patch")
    if not isinstance(patch, dict):
        raise InvalidInput("--patch must be a JSON object")
    target = _server()
    if target is not None:
        _echo(_on_server(target, hub, lambda remote: remote.update_desired(device_id, patch, if_match)))
        return
    control = _control()
    if control is not None:
        path = control.device_path(hub, device_id, "twin/desired")
        _echo(asyncio.run(control.call("PATCH", path, {"patch": patch, "ifMatch": if_match})))
        return

    async def offline(store: Store) -> dict[str, Any]:
        from iotdps.cli.actor import local_actor
        from iotdps.hub.cloud import offline_operations
        from iotdps.hub.twin import sdk_twin_json

        operations = offline_operations(store, hub)
        twin = await operations.update_desired(hub, device_id, patch, if_match, actor=local_actor())
        return {"version": twin.version, "properties": sdk_twin_json(twin), "tags": dict(twin.tags)}

    _echo(_with_store(offline))


@click.group("method")
def method_group() -> None:
    """Direct methods on connected devices (needs the running server)."""


@method_group.command("invoke")
@_remote_hub_opts
@click.option("--name", required=True, help="Method name.")
@click.option("--payload", help="JSON payload (default null).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=300), default=30, show_default=True)
def method_invoke(hub: str, device_id: str, name: str, payload: str | None, timeout: float) -> None:
    body = {"name": name, "payload": _json_option(payload, "--payload"), "timeout": timeout}
    target = _server()
    if target is not None:
        _echo(_on_server(target, hub, lambda r: r.invoke_method(device_id, name, body["payload"], timeout)))
        return
    control = _control()
    if control is None:
        raise NotFound(f"no running iotdps server (no control socket in {_data_dir()})")
    _echo(asyncio.run(control.call("POST", control.device_path(hub, device_id, "methods"), body)))


@click.group("c2d")
def c2d_group() -> None:
    """Cloud-to-device messages."""


@c2d_group.command("send")
@_remote_hub_opts
@click.option("--body", required=True, help="Message body (text).")
@click.option("--property", "props", multiple=True, help="key=value application property (repeatable).")
@click.option("--ttl", type=click.FloatRange(min=0.1, max=48 * 3600), help="Seconds until it expires (default 1 h).")
def c2d_send(hub: str, device_id: str, body: str, props: tuple[str, ...], ttl: float | None) -> None:
    properties = _properties(props)
    target = _server()
    if target is not None:
        click.echo(_on_server(target, hub, lambda remote: remote.send_c2d(device_id, body, properties, ttl)))
        return
    control = _control()
    if control is not None:
        doc = {"body": body, "properties": properties, "ttl": ttl}
        result = asyncio.run(control.call("POST", control.device_path(hub, device_id, "messages"), doc))
        click.echo(result["messageId"])
        return

    async def offline(store: Store) -> str:
        from iotdps.hub.cloud import offline_operations

        return await offline_operations(store, hub).send_c2d(hub, device_id, body.encode(), properties, ttl)

    click.echo(_with_store(offline))


def register(group: click.Group) -> None:
    for command in (device_group, telemetry_group, twin_group, method_group, c2d_group):
        group.add_command(command)
