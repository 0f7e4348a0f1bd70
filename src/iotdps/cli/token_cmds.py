"""`iotdps sas-token` and the group device key: credentials made on this machine.

    iotdps sas-token --policy NAME --key KEY [--host HOST]          a management API token
    iotdps sas-token --hub HOST --device ID (--key K | --group-key G)   a hub device token
    iotdps sas-token --id-scope S --registration-id ID (--key K | --group-key G)   a DPS token

`--group-key` derives the device key from a symmetric-key group's key (what the device does).
Nothing here talks to a service; the token is printed for a script or a test client to use.
The management policy token is what the CLI itself signs with; the device tokens are what the
Azure device SDKs send (azure-wire-protocol.md 1.3 and 8.1).
"""

from __future__ import annotations

import base64
import binascii
import time

import click

from iotdps.errors import InvalidInput
from iotdps.ids import check_registration_id

__all__ = ["device_key", "register"]

_MAX_TTL = 366 * 24 * 3600  # the management API's own cap; device tokens are bounded by the server


def _check_key(key: str, what: str) -> str:
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not base64") from None
    return key


def device_key(key: str | None, group_key: str | None, registration_id: str) -> str:
    """The device's own key: `key` as given, or derived from `group_key` for `registration_id`."""
    from iotdps.sas import derive_device_key

    if (key is None) == (group_key is None):
        raise InvalidInput("give the device's --key, or --group-key to derive it")
    if group_key is not None:
        return derive_device_key(_check_key(group_key, "--group-key"), registration_id)
    assert key is not None
    return _check_key(key, "--key")


@click.command("sas-token")
@click.option("--policy", help="Shared access policy name: a token for the management API.")
@click.option(
    "--host", envvar="IOTDPS_SERVER", help="With --policy: the server (host name or URL) [env IOTDPS_SERVER]."
)
@click.option("--hub", help="Hub host name: a device token for the hub (with --device).")
@click.option("--device", "device_id", help="Device id on --hub.")
@click.option("--id-scope", help="ID scope: a DPS registration token (with --registration-id).")
@click.option("--registration-id", help="Registration id at DPS.")
@click.option("--key", envvar="IOTDPS_KEY", help="The policy's or the device's key (base64; secret).")
@click.option("--group-key", help="A symmetric-key group's key: derive the device's key from it (secret).")
@click.option("--ttl", type=click.IntRange(1, _MAX_TTL), default=3600, show_default=True, help="Seconds valid.")
def sas_token(
    policy: str | None,
    host: str | None,
    hub: str | None,
    device_id: str | None,
    id_scope: str | None,
    registration_id: str | None,
    key: str | None,
    group_key: str | None,
    ttl: int,
) -> None:
    """Print a SharedAccessSignature: a policy's (management API), a hub device's or a DPS one."""
    from iotdps.sas import make_device_token, make_sas_token

    kinds = [policy is not None, hub is not None or device_id is not None, id_scope is not None]
    if kinds.count(True) != 1:
        raise InvalidInput(
            "say which token: --policy NAME, --hub HOST --device ID, or --id-scope SCOPE --registration-id ID"
        )
    expiry = int(time.time()) + ttl
    if policy is not None:
        from urllib.parse import urlsplit

        from iotdps.access.tokens import make_service_sas

        if key is None or group_key is not None:
            raise InvalidInput("a policy token needs the policy's --key")
        # The host name alone, as the CLI's own requests sign it (cli.remote).
        name = urlsplit(host if host is None or "://" in host else f"https://{host}").hostname if host else None
        if not name:
            raise InvalidInput("a policy token needs --host (or IOTDPS_SERVER)")
        click.echo(make_service_sas(name, policy, _check_key(key, "--key"), ttl))
        return
    if hub is not None or device_id is not None:
        if not hub or not device_id:
            raise InvalidInput("a hub device token needs --hub HOST and --device ID")
        if "/" in device_id:
            raise InvalidInput("--device must not contain '/'")
        click.echo(make_device_token(f"{hub}/devices/{device_id}", device_key(key, group_key, device_id), expiry))
        return
    assert id_scope is not None
    if not registration_id:
        raise InvalidInput("a DPS token needs --registration-id")
    check_registration_id(registration_id)
    click.echo(make_sas_token(id_scope, registration_id, device_key(key, group_key, registration_id), expiry))


def register(group: click.Group) -> None:
    group.add_command(sas_token)
