"""What every hub service API handler shares: the hub and device id a request names, loading a
device, etags, IoT Hub's error codes and its "never" time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime

from aiohttp import web

from iotdps.api._http import ApiContext
from iotdps.api.errors import ApiError
from iotdps.errors import InvalidInput
from iotdps.hub.devices import DeviceAuth, DeviceIdentity, Twin
from iotdps.timestamps import format_time

__all__ = [
    "HUB_API_VERSION",
    "NEVER",
    "check_etag",
    "connection_of",
    "device_id_in",
    "device_not_found",
    "first_or_none",
    "hub_of",
    "hub_time",
    "identity_etag",
    "load_device",
    "no_hub",
    "precondition_failed",
    "twin_etag",
    "x509_thumbprint_json",
]

HUB_API_VERSION = "2021-04-12"
# Azure's device id alphabet (up to 128 characters).
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}$")
NEVER = "0001-01-01T00:00:00Z"  # what IoT Hub answers for a time that never happened


def device_not_found(device_id: str) -> ApiError:
    """IoT Hub's DeviceNotFound (404001)."""
    return ApiError(404, 404001, "DeviceNotFound", f"device {device_id} not found")


def precondition_failed(what: str) -> ApiError:
    """IoT Hub's PreconditionFailed (412002) for the `what` (device or twin) etag."""
    return ApiError(412, 412002, "PreconditionFailed", f"the {what} etag does not match If-Match")


def no_hub() -> ApiError:
    """503: the route needs the running hub, and this process serves none."""
    return ApiError(503, 503001, "ServiceUnavailable", "the hub runtime is not running in this process")


def _b64_etag(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def identity_etag(device: DeviceIdentity) -> str:
    """Changes when the identity does (auth, status, capabilities), not when the twin does."""
    auth = device.auth
    material = json.dumps(
        [
            auth.type,
            auth.primary_key.reveal() if auth.primary_key else None,
            auth.secondary_key.reveal() if auth.secondary_key else None,
            list(auth.primary_thumbprints),
            list(auth.secondary_thumbprints),
            list(auth.issued_thumbprints),
            device.status,
            device.iot_edge,
            device.created.isoformat() if device.created else None,
        ]
    )
    # A digest, never the keys themselves; 12 bytes are plenty to tell versions apart.
    return _b64_etag(hashlib.sha256(material.encode()).digest()[:12])


def twin_etag(twin: Twin) -> str:
    """IoT Hub's twin etags are base64 of a counter; ours is the twin's version."""
    return _b64_etag(twin.version.to_bytes(8, "big"))


def hub_time(value: datetime | None) -> str:
    """A time as IoT Hub writes it; one that never happened is its year-1 time."""
    return format_time(value) if value is not None else NEVER


def first_or_none(values: Sequence[str]) -> str | None:
    """The first thumbprint, or None: IoT Hub shows one primary and one secondary."""
    return values[0] if values else None


def x509_thumbprint_json(auth: DeviceAuth) -> dict[str, str | None]:
    """IoT Hub's `x509Thumbprint` of an identity. A device whose issued certificate is its only
    credential (issue 18) shows that certificate's thumbprint as its primary one, as IoT Hub
    shows a device registered by thumbprint, so a read-modify-write of the identity by an IoT Hub
    client stays valid (`put_device` knows the thumbprint for the issued one it is)."""
    primary = auth.primary_thumbprints or (auth.issued_thumbprints if auth.issued_only else ())
    return {
        "primaryThumbprint": first_or_none(primary),
        "secondaryThumbprint": first_or_none(auth.secondary_thumbprints),
    }


def connection_of(ctx: ApiContext, device: DeviceIdentity) -> str:
    """Connected or Disconnected, as this process's hub sees the device now."""
    hub = ctx.hub
    return "Connected" if hub is not None and hub.is_connected(device.hub, device.device_id) else "Disconnected"


def device_id_in(request: web.Request) -> str:
    """The `{id}` of the path, checked against IoT Hub's device id alphabet."""
    value = request.match_info["id"]
    if not _DEVICE_ID.match(value):
        raise InvalidInput("a device id is 1..128 characters of letters, digits and -:.+%_#*?!(),=@$'")
    return value


def hub_of(ctx: ApiContext) -> str:
    """The hub this request addresses (api.auth chose it from the Host)."""
    if ctx.hub_name is None:  # pragma: no cover - set by the app for every hub route
        raise no_hub()
    return ctx.hub_name


async def load_device(ctx: ApiContext, hub: str, device_id: str) -> DeviceIdentity:
    """The stored identity (with its twin), or DeviceNotFound."""
    async with ctx.store.begin() as uow:
        device = await uow.devices.get(hub, device_id)
    if device is None:
        raise device_not_found(device_id)
    return device


def check_etag(given: str | None, current: str, what: str) -> None:
    """If-Match: absent or `*` matches anything; else it must be the current etag."""
    if given not in (None, "*") and given != current:
        raise precondition_failed(what)
