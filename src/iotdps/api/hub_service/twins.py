"""Device twins from the service side: read, merge (PATCH) or replace (PUT) tags and desired
properties. Reported properties belong to the device and are never written here.

    GET    /twins/{id}                  the twin: tags, desired and reported properties
    PATCH  /twins/{id}                  merge tags and desired properties (If-Match: twin etag)
    PUT    /twins/{id}                  replace tags and desired properties

A desired-properties change goes through the hub (`HubOperations.update_desired`), which
pushes it to the device when it is connected; a tags-only change is written here. Either is
logged in the audit trail (`hub-twin.update`) in the transaction of its write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

from aiohttp import web

from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
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
    no_hub,
    precondition_failed,
    twin_etag,
    x509_thumbprint_json,
)
from iotdps.errors import NotFound, PreconditionFailed
from iotdps.hub.audit import record_twin
from iotdps.hub.devices import DeviceIdentity, Twin

# The twin's merge rules are the hub's (pure functions): one definition of a patch for the
# device side and the service side.
from iotdps.hub.twin import apply_desired_patch, merge_patch
from iotdps.ports import HubUnitOfWork

__all__ = ["get_twin", "patch_twin", "replace_twin", "twin_json"]


def twin_json(device: DeviceIdentity, connection_state: str) -> dict[str, Any]:
    twin = device.twin
    auth = device.auth
    return {
        "deviceId": device.device_id,
        "etag": twin_etag(twin),
        "deviceEtag": identity_etag(device),
        "version": twin.version,
        "status": device.status,
        "statusUpdateTime": hub_time(device.updated),
        "connectionState": connection_state,
        "lastActivityTime": NEVER,
        "cloudToDeviceMessageCount": 0,
        "authenticationType": auth.type,
        "x509Thumbprint": x509_thumbprint_json(auth),
        "capabilities": {"iotEdge": device.iot_edge},
        "tags": dict(twin.tags),
        "properties": {
            "desired": {**twin.desired, "$version": twin.desired_version},
            "reported": {**twin.reported, "$version": twin.reported_version},
        },
    }


async def get_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    device = await load_device(ctx, hub_of(ctx), device_id_in(request))
    body = twin_json(device, connection_of(ctx, device))
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
    hub, device_id = hub_of(ctx), device_id_in(request)
    doc = json_object(await read_json(request, ctx), "the twin")
    tags, desired = _twin_sections(doc)
    etag = if_match(request)
    device = await load_device(ctx, hub, device_id)
    check_etag(etag, twin_etag(device.twin), "twin")
    if replace_all:
        tags = _replacement(device.twin.tags, tags or {})
        desired = _replacement(device.twin.desired, desired or {})
    if tags:
        apply_desired_patch(Twin(), tags)  # the same rules for tag names and depth as properties
    if desired:
        if ctx.hub is None:
            raise no_hub()
        # Desired properties and tags in one write (nothing half-applied), checked against the
        # stored row's etag; the hub pushes the desired patch when the device is connected.
        try:
            await ctx.hub.update_desired(hub, device_id, desired, device.etag, tags=tags or None, actor=ctx.acting)
        except PreconditionFailed:
            raise precondition_failed("twin") from None
        except NotFound:
            raise device_not_found(device_id) from None
    elif tags:
        await _merge_tags(ctx, hub, device_id, tags, etag)
    device = await load_device(ctx, hub, device_id)
    body = twin_json(device, connection_of(ctx, device))
    return json_response(body, etag=body["etag"])


async def _merge_tags(ctx: ApiContext, hub: str, device_id: str, tags: Mapping[str, Any], etag: str | None) -> None:
    """Merge tags; `etag` (the twin's) is checked in the same transaction. Retried when a
    concurrent writer (a device reporting) changed the row in between."""
    for attempt in range(5):
        try:
            async with ctx.store.begin() as uow:
                current = await uow.devices.get(hub, device_id)
                if current is None:
                    raise device_not_found(device_id)
                check_etag(etag, twin_etag(current.twin), "twin")
                merged = merge_patch(current.twin.tags, tags)
                twin = replace(current.twin, tags=merged, version=current.twin.version + 1)
                saved = await uow.devices.put(replace(current, twin=twin), if_match=current.etag)
                await record_twin(cast(HubUnitOfWork, uow), ctx.acting, current, saved, ["tags"])
            return
        except PreconditionFailed:
            if attempt == 4:
                raise


async def patch_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    return await _change_twin(ctx, request, replace_all=False)


async def replace_twin(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    return await _change_twin(ctx, request, replace_all=True)
