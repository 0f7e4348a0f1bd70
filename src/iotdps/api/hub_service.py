"""The IoT hub service API subset (api-version 2021-04-12, what `azure-iot-hub` 2.7.0 sends).

    GET    /devices                     identities of the hub (`top`: at most this many)
    GET    /devices/{id}                one identity (with its keys, as Azure answers)
    PUT    /devices/{id}                create (no If-Match; 409 if it exists) or update (If-Match)
    DELETE /devices/{id}                delete (If-Match; `*` or absent: unconditional)
    GET    /twins/{id}                  the twin: tags, desired and reported properties
    PATCH  /twins/{id}                  merge tags and desired properties (If-Match: twin etag)
    PUT    /twins/{id}                  replace tags and desired properties
    POST   /twins/{id}/methods          invoke a direct method
    POST   /devices/{id}/messages/deviceBound   iotdps: queue a cloud-to-device message
    GET    /devices/{id}/messages/events        iotdps: recent telemetry of the device
    GET    /devices/{id}/messages/events/stream iotdps: new telemetry as server-sent events

Which hub: every hub has its own host name, and the SDK addresses one by its connection
string's HostName (`HostName=<hub host>:<management port>`): the request's `Host` names the
hub, and the token's `sr` must name the same hub (a token for one hub is useless on another).

Etags: a device identity and its twin change independently (a device reporting a property
must not break an operator's identity update), so each gets its own etag derived from what it
covers: the identity's from its auth, status and capabilities, the twin's from its version.
The store's row etag guards every write underneath, so a concurrent writer is never lost.

A desired-properties change goes through the hub (`HubOperations.update_desired`), which
pushes it to the device when it is connected. Errors carry IoT Hub's codes (DeviceNotFound
404001, DeviceAlreadyExists 409001, PreconditionFailed 412002, DeviceNotOnline 404103,
GatewayTimeout 504101).

`azure-iot-hub` sends cloud-to-device messages over AMQP only (`send_c2d_message` uses uamqp
to `amqps://<host>:5671`); iotdps has no AMQP listener, so C2D has its own REST route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol, cast

from aiohttp import web

from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
from iotdps.api.errors import ApiError
from iotdps.errors import InvalidInput, IotdpsError, NotFound, PreconditionFailed, Throttled
from iotdps.hub.devices import AuthType, DeviceAuth, DeviceIdentity, DeviceStatus, Twin, generation_id
from iotdps.hub.records import TelemetryMessage

# The twin's merge rules are the hub's (pure functions): one definition of a patch for the
# device side and the service side.
from iotdps.hub.twin import apply_desired_patch, merge_patch
from iotdps.ports import HubUnitOfWork
from iotdps.secret import Secret
from iotdps.timestamps import format_time

__all__ = [
    "HUB_API_VERSION",
    "HubOperations",
    "delete_device",
    "device_json",
    "get_device",
    "get_twin",
    "invoke_method",
    "list_devices",
    "patch_twin",
    "put_device",
    "read_events",
    "replace_twin",
    "send_c2d",
    "stream_events",
    "twin_etag",
    "twin_json",
]

HUB_API_VERSION = "2021-04-12"
# Azure's device id alphabet (up to 128 characters).
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-:.+%_#*?!(),=@$']{1,128}$")
_THUMBPRINT = re.compile(r"^(?:[0-9A-F]{40}|[0-9A-F]{64})$")
_NEVER = "0001-01-01T00:00:00Z"  # what IoT Hub answers for a time that never happened
_MAX_TIMEOUT = 300
_CONNECT_POLL = 0.1
_MAX_EVENTS = 1000


class HubOperations(Protocol):
    """What the API needs of the running hub (iotdps.hub.cloud.CloudOperations provides it)."""

    def is_connected(self, hub: str, device_id: str) -> bool: ...
    def connected_count(self, hub: str) -> int: ...
    def disconnect(self, hub: str, device_id: str, reason: str = ...) -> bool: ...
    async def update_desired(
        self,
        hub: str,
        device_id: str,
        patch: Mapping[str, Any],
        if_match: str | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
    ) -> Twin: ...
    async def invoke_method(
        self, hub: str, device_id: str, name: str, payload: Any, timeout: float
    ) -> tuple[int, Any]: ...
    async def send_c2d(
        self, hub: str, device_id: str, body: bytes, properties: Mapping[str, str], ttl: float | None
    ) -> str: ...


# --------------------------------------------------------------------------- errors


def _device_not_found(device_id: str) -> ApiError:
    return ApiError(404, 404001, "DeviceNotFound", f"device {device_id} not found")


def _precondition(what: str) -> ApiError:
    return ApiError(412, 412002, "PreconditionFailed", f"the {what} etag does not match If-Match")


def _no_hub() -> ApiError:
    return ApiError(503, 503001, "ServiceUnavailable", "the hub runtime is not running in this process")


# --------------------------------------------------------------------------- JSON shapes


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


def _time(value: datetime | None) -> str:
    return format_time(value) if value is not None else _NEVER


def _first(values: Sequence[str]) -> str | None:
    return values[0] if values else None


def _connection(ctx: ApiContext, device: DeviceIdentity) -> str:
    hub = ctx.hub
    return "Connected" if hub is not None and hub.is_connected(device.hub, device.device_id) else "Disconnected"


def device_json(device: DeviceIdentity, connection_state: str) -> dict[str, Any]:
    auth = device.auth
    return {
        "deviceId": device.device_id,
        "generationId": generation_id(device),
        "etag": identity_etag(device),
        "connectionState": connection_state,
        "status": device.status,
        "statusReason": None,
        "connectionStateUpdatedTime": _NEVER,
        "statusUpdatedTime": _time(device.updated),
        "lastActivityTime": _NEVER,
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "type": auth.type,
            "symmetricKey": {
                "primaryKey": auth.primary_key.reveal() if auth.primary_key else None,
                "secondaryKey": auth.secondary_key.reveal() if auth.secondary_key else None,
            },
            "x509Thumbprint": {
                "primaryThumbprint": _first(auth.primary_thumbprints),
                "secondaryThumbprint": _first(auth.secondary_thumbprints),
            },
        },
        "capabilities": {"iotEdge": device.iot_edge},
    }


def twin_json(device: DeviceIdentity, connection_state: str) -> dict[str, Any]:
    twin = device.twin
    auth = device.auth
    return {
        "deviceId": device.device_id,
        "etag": twin_etag(twin),
        "deviceEtag": identity_etag(device),
        "version": twin.version,
        "status": device.status,
        "statusUpdateTime": _time(device.updated),
        "connectionState": connection_state,
        "lastActivityTime": _NEVER,
        "cloudToDeviceMessageCount": 0,
        "authenticationType": auth.type,
        "x509Thumbprint": {
            "primaryThumbprint": _first(auth.primary_thumbprints),
            "secondaryThumbprint": _first(auth.secondary_thumbprints),
        },
        "capabilities": {"iotEdge": device.iot_edge},
        "tags": dict(twin.tags),
        "properties": {
            "desired": {**twin.desired, "$version": twin.desired_version},
            "reported": {**twin.reported, "$version": twin.reported_version},
        },
    }


# --------------------------------------------------------------------------- request parsing


def _device_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _DEVICE_ID.match(value):
        raise InvalidInput("a device id is 1..128 characters of letters, digits and -:.+%_#*?!(),=@$'")
    return value


def _hub(ctx: ApiContext) -> str:
    if ctx.hub_name is None:  # pragma: no cover - set by the app for every hub route
        raise _no_hub()
    return ctx.hub_name


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


def _int_field(doc: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidInput(f"{name} must be a whole number of seconds")
    if not low <= int(value) <= _MAX_TIMEOUT:
        raise InvalidInput(f"{name} must be between {low} and {_MAX_TIMEOUT} seconds")
    return int(value)


# --------------------------------------------------------------------------- store helpers


async def _load(ctx: ApiContext, hub: str, device_id: str) -> DeviceIdentity:
    async with ctx.store.begin() as uow:
        device = await uow.devices.get(hub, device_id)
    if device is None:
        raise _device_not_found(device_id)
    return device


def _check_etag(given: str | None, current: str, what: str) -> None:
    if given not in (None, "*") and given != current:
        raise _precondition(what)


# --------------------------------------------------------------------------- devices


async def list_devices(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub = _hub(ctx)
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
    return json_response([device_json(d, _connection(ctx, d)) for d in found[:top]])


async def get_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    device = await _load(ctx, _hub(ctx), _device_id(request))
    body = device_json(device, _connection(ctx, device))
    return json_response(body, etag=body["etag"])


async def put_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    wanted = _parse_device(json_object(await read_json(request, ctx), "the device"), hub, device_id)
    etag = if_match(request)
    async with ctx.store.begin() as uow:
        stored = await uow.devices.get(hub, device_id)
        if etag is None:
            if stored is not None:
                raise ApiError(409, 409001, "DeviceAlreadyExists", f"device {device_id} already exists")
            saved = await uow.devices.put(wanted)
        else:
            if stored is None:
                raise _device_not_found(device_id)
            _check_etag(etag, identity_etag(stored), "device")
            # The twin and the DPS link stay; only the identity changes.
            updated = replace(stored, auth=wanted.auth, status=wanted.status, iot_edge=wanted.iot_edge)
            saved = await uow.devices.put(updated, if_match=stored.etag)
    if stored is not None and ctx.hub is not None and (saved.status == "disabled" or saved.auth != stored.auth):
        # As IoT Hub does: a disabled device or one whose credentials changed is dropped.
        ctx.hub.disconnect(hub, device_id, "the device identity was changed by an operator")
    body = device_json(saved, _connection(ctx, saved))
    return json_response(body, etag=body["etag"])


async def delete_device(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    etag = if_match(request)
    async with ctx.store.begin() as uow:
        stored = await uow.devices.get(hub, device_id)
        if stored is None:
            raise _device_not_found(device_id)
        _check_etag(etag, identity_etag(stored), "device")
        await uow.devices.delete(hub, device_id, if_match=stored.etag)
        # Every store of ours implements the hub repositories too (iotdps.ports).
        await cast(HubUnitOfWork, uow).c2d.purge(hub, device_id)
    if ctx.hub is not None:
        ctx.hub.disconnect(hub, device_id, "the device identity was deleted")
    return web.Response(status=204)


# --------------------------------------------------------------------------- twins


async def get_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    device = await _load(ctx, _hub(ctx), _device_id(request))
    body = twin_json(device, _connection(ctx, device))
    return json_response(body, etag=body["etag"])


def _twin_sections(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    tags = doc.get("tags")
    if tags is not None:
        tags = json_object(tags, "tags")
    props = doc.get("properties")
    desired = None
    if props is not None:
        desired = json_object(props, "properties").get("desired")
        if desired is not None:
            desired = json_object(desired, "properties.desired")
        # Reported properties belong to the device; the service side cannot write them.
    return tags, desired


def _replacement(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `old` into `new` (keys gone from `new` become null)."""
    patch: dict[str, Any] = {k: None for k in old if k not in new and not k.startswith("$")}
    for key, value in new.items():
        if key.startswith("$"):
            continue
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = _replacement(before, value)
        else:
            patch[key] = value
    return patch


async def _change_twin(ctx: ApiContext, request: web.Request, *, replace_all: bool) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    doc = json_object(await read_json(request, ctx), "the twin")
    tags, desired = _twin_sections(doc)
    etag = if_match(request)
    device = await _load(ctx, hub, device_id)
    _check_etag(etag, twin_etag(device.twin), "twin")
    if replace_all:
        tags = _replacement(device.twin.tags, tags or {})
        desired = _replacement(device.twin.desired, desired or {})
    if tags:
        apply_desired_patch(Twin(), tags)  # the same rules for tag names and depth as properties
    if desired:
        if ctx.hub is None:
            raise _no_hub()
        # Desired properties and tags in one write (nothing half-applied), checked against the
        # stored row's etag; the hub pushes the desired patch when the device is connected.
        try:
            await ctx.hub.update_desired(hub, device_id, desired, device.etag, tags=tags or None)
        except PreconditionFailed:
            raise _precondition("twin") from None
        except NotFound:
            raise _device_not_found(device_id) from None
    elif tags:
        await _merge_tags(ctx, hub, device_id, tags, etag)
    device = await _load(ctx, hub, device_id)
    body = twin_json(device, _connection(ctx, device))
    return json_response(body, etag=body["etag"])


async def _merge_tags(ctx: ApiContext, hub: str, device_id: str, tags: Mapping[str, Any], etag: str | None) -> None:
    """Merge tags; `etag` (the twin's) is checked in the same transaction. Retried when a
    concurrent writer (a device reporting) changed the row in between."""
    for attempt in range(5):
        try:
            async with ctx.store.begin() as uow:
                current = await uow.devices.get(hub, device_id)
                if current is None:
                    raise _device_not_found(device_id)
                _check_etag(etag, twin_etag(current.twin), "twin")
                merged = merge_patch(current.twin.tags, tags)
                twin = replace(current.twin, tags=merged, version=current.twin.version + 1)
                await uow.devices.put(replace(current, twin=twin), if_match=current.etag)
            return
        except PreconditionFailed:
            if attempt == 4:
                raise


async def patch_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    return await _change_twin(ctx, request, replace_all=False)


async def replace_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    return await _change_twin(ctx, request, replace_all=True)


# --------------------------------------------------------------------------- direct methods


async def invoke_method(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    doc = json_object(await read_json(request, ctx), "the method request")
    name = doc.get("methodName")
    if not isinstance(name, str) or not name:
        raise InvalidInput("methodName is required")
    response_timeout = _int_field(doc, "responseTimeoutInSeconds", 30, 1)
    connect_timeout = _int_field(doc, "connectTimeoutInSeconds", 0, 0)
    await _load(ctx, hub, device_id)  # DeviceNotFound before DeviceNotOnline
    runtime = ctx.hub
    if runtime is None:
        raise _no_hub()
    # connectTimeoutInSeconds: how long to wait for an offline device to come online (and
    # subscribe to methods) before the call counts as failed, as IoT Hub does.
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            status, payload = await runtime.invoke_method(hub, device_id, name, doc.get("payload"), response_timeout)
            break
        except NotFound:
            if time.monotonic() >= deadline:
                raise ApiError(
                    404, 404103, "DeviceNotOnline", f"device {device_id} is not online or not listening for methods"
                ) from None
            await asyncio.sleep(_CONNECT_POLL)
        except IotdpsError as exc:
            if exc.http_status == 504:  # the hub's MethodTimeout
                raise ApiError(504, 504101, "GatewayTimeout", exc.message) from None
            raise
    return json_response({"status": status, "payload": payload})


# --------------------------------------------------------------------------- C2D and telemetry

# Request field -> the hub's wire key of that system property.
_C2D_SYSTEM = {
    "messageId": "$.mid",
    "correlationId": "$.cid",
    "contentType": "$.ct",
    "contentEncoding": "$.ce",
    "userId": "$.uid",
    "ack": "iothub-ack",
}


async def send_c2d(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    doc = json_object(await read_json(request, ctx), "the message")
    if "body" in doc and "bodyBase64" in doc:
        raise InvalidInput("give body or bodyBase64, not both")
    if "bodyBase64" in doc:
        encoded = doc["bodyBase64"]
        if not isinstance(encoded, str):
            raise InvalidInput("bodyBase64 must be a string")
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("bodyBase64 is not base64") from None
    else:
        text = doc.get("body", "")
        if not isinstance(text, str):
            raise InvalidInput("body must be a string (use bodyBase64 for bytes)")
        body = text.encode("utf-8")
    props = doc.get("properties") or {}
    if not isinstance(props, Mapping) or not all(isinstance(v, str) for v in props.values()):
        raise InvalidInput("properties must map names to strings")
    if any(str(k).startswith("$") or k == "iothub-ack" or not k for k in props):
        raise InvalidInput("application property names must be non-empty and not start with '$'")
    wire: dict[str, str] = {str(k): str(v) for k, v in props.items()}
    for field_name, key in _C2D_SYSTEM.items():
        value = doc.get(field_name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{field_name} must be a non-empty string")
        wire[key] = value
    if "ack" in doc and doc["ack"] not in ("none", "positive", "negative", "full"):
        raise InvalidInput("ack must be none, positive, negative or full")
    ttl = doc.get("ttlSeconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise InvalidInput("ttlSeconds must be a number")
    await _load(ctx, hub, device_id)
    if ctx.hub is None:
        raise _no_hub()
    try:
        message_id = await ctx.hub.send_c2d(hub, device_id, body, wire, None if ttl is None else float(ttl))
    except NotFound:
        raise _device_not_found(device_id) from None
    return json_response({"messageId": message_id}, status=202)


def _event_json(message: TelemetryMessage) -> dict[str, Any]:
    try:
        text: str | None = message.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "sequenceNumber": message.seq,
        "enqueuedTimeUtc": format_time(message.enqueued),
        "body": text,
        "bodyBase64": base64.b64encode(message.body).decode("ascii"),
        "systemProperties": {k: v for k, v in message.system_properties.items() if v is not None},
        "applicationProperties": dict(message.application_properties),
        "moduleId": message.module_id,
    }


async def read_events(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = _hub(ctx), _device_id(request)
    limit = _query_int(request, "limit", 100, 1, _MAX_EVENTS)
    after = _query_int(request, "after", None, 0, None)
    async with ctx.store.begin() as uow:
        if await uow.devices.get(hub, device_id) is None:
            raise _device_not_found(device_id)
        found = await cast(HubUnitOfWork, uow).telemetry.list(
            hub, device_id, after=after, limit=limit, newest=after is None
        )
    return json_response([_event_json(m) for m in found])


def _query_int(request: web.Request, name: str, default: int | None, low: int, high: int | None) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number") from None
    if value < low or (high is not None and value > high):
        raise InvalidInput(f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}")
    return value


# --------------------------------------------------------------------------- live telemetry

# The stream reads the store (where the hub's writer puts every acknowledged message), so it
# shows what every node of a fleet received, at the cost of a short poll.
_STREAM_POLL = 0.5
_STREAM_HEARTBEAT = 15.0
_STREAM_BATCH = 100
_MAX_STREAMS = 64
_open_streams = 0


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("Last-Event-ID must be a sequenceNumber") from None
    if value < 0:
        raise InvalidInput("Last-Event-ID must be a sequenceNumber")
    return value


async def stream_events(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new telemetry message of the device as `event: telemetry`
    (`id:` its sequenceNumber, `data:` the TelemetryEvent JSON), from `after` (or the
    Last-Event-ID a reconnecting EventSource sends) or else from now on, until `timeout`
    seconds have passed; then `event: end` and the stream closes (a client reconnects)."""
    global _open_streams
    hub, device_id = _hub(ctx), _device_id(request)
    after = _query_int(request, "after", None, 0, None)
    if after is None:
        after = _last_event_id(request)
    seconds = _query_int(request, "timeout", 300, 1, 3600)
    async with ctx.store.read() as uow:
        if await uow.devices.get(hub, device_id) is None:
            raise _device_not_found(device_id)
        if after is None:
            newest = await cast(HubUnitOfWork, uow).telemetry.list(hub, device_id, limit=1, newest=True)
            after = (newest[-1].seq or 0) if newest else 0
    if _open_streams >= _MAX_STREAMS:
        raise Throttled(f"{_MAX_STREAMS} telemetry streams are open; try again later", 5)
    _open_streams += 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b": telemetry of " + device_id.encode() + b"\n\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        quiet_since = loop.time()
        while loop.time() < deadline:
            async with ctx.store.read() as uow:
                found = await cast(HubUnitOfWork, uow).telemetry.list(
                    hub, device_id, after=after, limit=_STREAM_BATCH
                )
            for message in found:
                data = json.dumps(_event_json(message))
                await response.write(f"id: {message.seq}\nevent: telemetry\ndata: {data}\n\n".encode())
                after = message.seq
            now = loop.time()
            if found:
                quiet_since = now
            elif now - quiet_since >= _STREAM_HEARTBEAT:
                await response.write(b": keep-alive\n\n")
                quiet_since = now
            if len(found) < _STREAM_BATCH:
                await asyncio.sleep(max(0.0, min(_STREAM_POLL, deadline - now)))
        await response.write(b"event: end\ndata: {}\n\n")
    except ConnectionError:
        pass  # the client went away; nothing to answer
    finally:
        _open_streams -= 1
    return response
