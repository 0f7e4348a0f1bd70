"""Where an administration command acts: the local store, or a running iotdps.

Every administration command takes the same target options:
    --data-dir DIR / --dsn DSN            the local store (the default)
    --server URL                          a running iotdps's management API instead, with
    --connection-string CS                `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`
    --policy NAME --key KEY               (or these two), and
    --server-ca FILE                      the CA that signed the server's certificate.
Environment: IOTDPS_SERVER, IOTDPS_CONNECTION_STRING, IOTDPS_POLICY, IOTDPS_KEY,
IOTDPS_SERVER_CA. A connection string alone is enough: its HostName is the server.

`open_client` hands a command an `AdminClient` (cli.client): cli.local over the store, or
cli.remote over the management API; the commands are written once. This module stays light:
the store and the HTTP client are imported only when a command opens its target.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from iotdps.cli.server_target import ServerTarget, server_target

if TYPE_CHECKING:
    from iotdps.cli.client import AdminClient

__all__ = [
    "ServerTarget",
    "local_dsn",
    "open_client",
    "run_client",
    "server_target",
    "store_options",
    "target_options",
    "target_params",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- options


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep an option's value on the root context, where the commands' helpers look for it."""
    root = ctx.find_root()
    root.obj = root.obj or {}
    if value is not None:
        root.obj[str(param.name)] = value
    return value


_Options = list[tuple[str, dict[str, Any]]]

_STORE_OPTIONS: _Options = [
    (
        "--data-dir",
        {
            "envvar": "IOTDPS_DATA_DIR",
            "type": click.Path(file_okay=False),
            "help": "Data directory (default: the per-user data dir).",
        },
    ),
    ("--dsn", {"envvar": "IOTDPS_DSN", "help": "Store DSN (secret: not echoed)."}),
]

_SERVER_OPTIONS: _Options = [
    ("--server", {"envvar": "IOTDPS_SERVER", "help": "Management API URL of a running iotdps."}),
    (
        "--connection-string",
        {
            "envvar": "IOTDPS_CONNECTION_STRING",
            "help": "HostName=..;SharedAccessKeyName=..;SharedAccessKey=.. (secret).",
        },
    ),
    ("--policy", {"envvar": "IOTDPS_POLICY", "help": "Shared access policy name (with --key)."}),
    ("--key", {"envvar": "IOTDPS_KEY", "help": "Shared access policy key (secret)."}),
    (
        "--server-ca",
        {
            "envvar": "IOTDPS_SERVER_CA",
            "type": click.Path(dir_okay=False, exists=True),
            "help": "CA certificate that signed the server's certificate.",
        },
    ),
]


def _with_options(f: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    for name, kw in reversed(options):
        f = click.option(name, expose_value=False, callback=_remember, **kw)(f)
    return f


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--data-dir` / `--dsn` only, remembered on the root context (not passed to `f`)."""
    return _with_options(f, _STORE_OPTIONS)


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The local-store and server options, remembered on the root context (not passed to `f`)."""
    return _with_options(f, [*_STORE_OPTIONS, *_SERVER_OPTIONS])


def target_params() -> dict[str, Any]:
    """The target options the current command was given."""
    ctx = click.get_current_context()
    return dict(ctx.find_root().obj or {})


# --------------------------------------------------------------------------- which target


def local_dsn(params: Mapping[str, Any]) -> str:
    """The local store's DSN: `--dsn`, else the SQLite file of `--data-dir` (or the default)."""
    from iotdps.paths import default_data_dir, default_dsn

    if params.get("dsn"):
        return str(params["dsn"])
    data_dir = params.get("data_dir")
    return default_dsn(Path(data_dir) if data_dir else default_data_dir())


# --------------------------------------------------------------------------- opening it


@asynccontextmanager
async def open_client(params: Mapping[str, Any]) -> AsyncIterator[AdminClient]:
    """The administration client for the options in `params` (the root context's obj)."""
    target = server_target(params)
    if target is not None:
        # Imported here: aiohttp and the API's token signer are for --server only.
        from iotdps.cli.remote import RemoteAdminClient

        remote = RemoteAdminClient(target)
        try:
            yield remote
        finally:
            await remote.close()
        return
    from iotdps.cli.local import LocalAdminClient
    from iotdps.store import open_store

    store = await open_store(local_dsn(params))
    try:
        yield LocalAdminClient(store)
    finally:
        await store.close()


def run_client(fn: Callable[[AdminClient], Awaitable[T]]) -> T:
    """Run `fn` with the administration client the command's options name (local or server)."""
    params = target_params()

    async def go() -> T:
        async with open_client(params) as client:
            return await fn(client)

    return asyncio.run(go())
