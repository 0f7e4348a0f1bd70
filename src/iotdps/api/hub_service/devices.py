"""Device identities of a hub: list, read, create or update, delete.

    GET    /devices                     identities of the hub (`top`: at most this many)
    GET    /devices/{id}                one identity (with its keys, as Azure answers)
    PUT    /devices/{id}                create (no If-Match; 409 if it exists) or update (If-Match)
    DELETE /devices/{id}                delete (If-Match; `*` or absent: unconditional)

A disabled device, or one whose credentials an operator changed, is disconnected, as IoT Hub
does; a deleted one loses its queued cloud-to-device messages too. Each change is logged in the
audit trail in its own transaction (iotdps.hub.audit: digests and whether the keys changed,
never the keys).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from aiohttp import web

from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
from iotdps.api.errors import ApiError
from iotdps.api.hub_service.common import (
    NEVER,
    check_etag,
    connection_of,
    device_id_in,
    device_not_found,
    hub_of,
    hub_time,
    identity_etag,
    load_device,
    x509_thumbprint_json,
)
from iotdps.errors import InvalidInput
from iotdps.hub.audit import record_identity
from iotdps.hub.devices import AuthType, DeviceAuth, DeviceIdentity, DeviceStatus, generation_id
from iotdps.ports import HubUnitOfWork
from iotdps.secret import Secret

__all__ = ["delete_device", "device_json", "get_device", "list_devices", "put_device"]

_THUMBPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")


def device_json(device: DeviceIdentity, connection_state: str) -> dict[str, Any]:
    auth = device.auth
    return {
        "deviceId": device.device_id,
        "generationId": generation_id(device),
        "etag": identity_etag(device),
        "connectionState": connection_state,
        "status": device.status,
        "statusReason": None,
        "connectionStateUpdatedTime": NEVER,
        "statusUpdatedTime": hub_time(device.updated),
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "type": auth.type,
            "symmetricKey": {
                "primaryKey": auth.primary_key.reveal() if auth.primary_key else None,
                "secondaryKey": auth.secondary_key.reveal() if auth.secondary_key else None,
            },
            "x509Thumbprint": x509_thumbprint_json(auth),
            # An iotdps addition (issue 18): the certificate the service issued to the device at
            # registration (SHA-256, SHA-1), accepted beside the credential above.
            "issuedThumbprints": list(auth.issued_thumbprints),
        },
        "capabilities": {"iotEdge": device.iot_edge},
    }


def _key(value: object, which: str) -> Secret[str] | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{which} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{which} is not base64") from None
    if not 16 <= len(raw) <= 64:
        raise InvalidInput(f"{which} must be 16 to 64 bytes")
    return Secret(value)


def _new_key() -> Secret[str]:
    return Secret(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))


def _thumbprint(value: object, which: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise InvalidInput(f"{which} must be a string")
    cleaned = value.replace(":", "").replace(" ", "").upper()
    if not _THUMBPRINT.match(cleaned):
        raise InvalidInput(f"{which} must be a SHA-1 (40) or SHA-256 (64) hex thumbprint")
    return (cleaned,)


def _parse_auth(doc: object) -> DeviceAuth:
    if doc is None:
        return DeviceAuth("sas", _new_key(), _new_key())
    body = json_object(doc, "authentication")
    kind = body.get("type") or "sas"
    if kind not in ("sas", "selfSigned", "certificateAuthority"):
        raise InvalidInput("authentication.type must be sas, selfSigned or certificateAuthority")
    if kind == "sas":
        keys = body.get("symmetricKey") or {}
        keys = json_object(keys, "authentication.symmetricKey")
        primary = _key(keys.get("primaryKey"), "primaryKey") or _new_key()
        secondary = _key(keys.get("secondaryKey"), "secondaryKey") or _new_key()
        return DeviceAuth("sas", primary, secondary)
    if kind == "selfSigned":
        prints = json_object(body.get("x509Thumbprint") or {}, "authentication.x509Thumbprint")
        primary_tp = _thumbprint(prints.get("primaryThumbprint"), "primaryThumbprint")
        secondary_tp = _thumbprint(prints.get("secondaryThumbprint"), "secondaryThumbprint")
        if not primary_tp:
            raise InvalidInput("a selfSigned device needs x509Thumbprint.primaryThumbprint")
        return DeviceAuth("selfSigned", primary_thumbprints=primary_tp, secondary_thumbprints=secondary_tp)
    return DeviceAuth(cast(AuthType, kind))


def _keeping_issued(wanted: DeviceAuth, stored: DeviceAuth) -> DeviceAuth:
    """The credential an operator PUT, with the certificate DPS issued to the device kept (issue
    18): issuance and renewal manage it, as provisioning manages the twin and the DPS link; an
    operator ends it by revoking the certificate or deleting the identity. `device_json` shows an
    issued-only device's issued thumbprint as its primary one; sent back, it stays issued rather
    than becoming the device's own, so a read-modify-write changes nothing."""
    issued = {tp.upper() for tp in stored.issued_thumbprints}
    primary = tuple(tp for tp in wanted.primary_thumbprints if tp not in issued)
    secondary = tuple(tp for tp in wanted.secondary_thumbprints if tp not in issued)
    kept = replace(wanted, primary_thumbprints=primary, secondary_thumbprints=secondary)
    return kept.with_issued(*stored.issued_thumbprints)


def _parse_device(doc: Mapping[str, Any], hub: str, device_id: str) -> DeviceIdentity:
    given = doc.get("deviceId")
    if given not in (None, device_id):
        raise InvalidInput(f"deviceId {given!r} in the body differs from {device_id!r} in the URL")
    status = doc.get("status") or "enabled"
    if status not in ("enabled", "disabled"):
        raise InvalidInput("status must be enabled or disabled")
    caps = json_object(doc.get("capabilities") or {}, "capabilities")
    edge = caps.get("iotEdge", False)
    if not isinstance(edge, bool):
        raise InvalidInput("capabilities.iotEdge must be a boolean")
    return DeviceIdentity(
        hub=hub,
        device_id=device_id,
        auth=_parse_auth(doc.get("authentication")),
        status=cast(DeviceStatus, status),
        iot_edge=edge,
    )


async def list_devices(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub = hub_of(ctx)
    raw = request.query.get("top")
    top = 1000
    if raw:
        try:
            top = int(raw)
        except ValueError:
            raise InvalidInput("top must be a number") from None
        # Azure: anything outside 1..1000 means 1000.
        top = top if 1 <= top <= 1000 else 1000
    found: list[DeviceIdentity] = []
    token: str | None = None
    async with ctx.store.begin() as uow:
        while len(found) < top:
            page = await uow.devices.list(hub, page_size=min(100, top - len(found)), continuation=token)
            found.extend(page.items)
            token = page.continuation
            if not token:
                break
    return json_response([device_json(d, connection_of(ctx, d)) for d in found[:top]])


async def get_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    device = await load_device(ctx, hub_of(ctx), device_id_in(request))
    body = device_json(device, connection_of(ctx, device))
    return json_response(body, etag=body["etag"])


async def put_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = hub_of(ctx), device_id_in(request)
    wanted = _parse_device(json_object(await read_json(request, ctx), "the device"), hub, device_id)
    etag = if_match(request)
    async with ctx.store.begin() as uow:
        stored = await uow.devices.get(hub, device_id)
        if etag is None:
            if stored is not None:
                raise ApiError(409, 409001, "DeviceAlreadyExists", f"device {device_id} already exists")
            saved = await uow.devices.put(wanted)
            await record_identity(cast(HubUnitOfWork, uow), ctx.acting, "hub-device.create", None, saved)
        else:
            if stored is None:
                raise device_not_found(device_id)
            check_etag(etag, identity_etag(stored), "device")
            # The twin, the DPS link and the issued certificate stay; only the identity changes.
            auth = _keeping_issued(wanted.auth, stored.auth)
            updated = replace(stored, auth=auth, status=wanted.status, iot_edge=wanted.iot_edge)
            saved = await uow.devices.put(updated, if_match=stored.etag)
            await record_identity(cast(HubUnitOfWork, uow), ctx.acting, "hub-device.update", stored, saved)
    if stored is not None and ctx.hub is not None and (saved.status == "disabled" or saved.auth != stored.auth):
        # As IoT Hub does: a disabled device or one whose credentials changed is dropped.
        ctx.hub.disconnect(hub, device_id, "the device identity was changed by an operator")
    body = device_json(saved, connection_of(ctx, saved))
    return json_response(body, etag=body["etag"])


async def delete_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = hub_of(ctx), device_id_in(request)
    etag = if_match(request)
    async with ctx.store.begin() as uow:
        stored = await uow.devices.get(hub, device_id)
        if stored is None:
            raise device_not_found(device_id)
        check_etag(etag, identity_etag(stored), "device")
        await uow.devices.delete(hub, device_id, if_match=stored.etag)
        # Every store of ours implements the hub repositories too (iotdps.ports).
        hub_uow = cast(HubUnitOfWork, uow)
        await hub_uow.c2d.purge(hub, device_id)
        await record_identity(hub_uow, ctx.acting, "hub-device.delete", stored, None)
    if ctx.hub is not None:
        ctx.hub.disconnect(hub, device_id, "the device identity was deleted")
    return web.Response(status=204)
