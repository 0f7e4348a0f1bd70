"""Twin documents and patches, as the device SDK and the service API see them (section 8.4).

A patch is a JSON merge: objects merge key by key, `null` deletes a key, anything else
replaces. Every change of a section bumps that section's `$version` and the twin's version.
`update_twin` is the one read-change-write of a stored twin (the device's reported patches and
the cloud's desired patches alike).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from iotdps.errors import InvalidInput, NotFound, PreconditionFailed
from iotdps.hub.devices import DeviceIdentity, Twin
from iotdps.ports import HubStore, HubUnitOfWork

__all__ = [
    "MAX_DEPTH",
    "Written",
    "apply_desired_patch",
    "apply_reported_patch",
    "device_twin_json",
    "merge_patch",
    "sdk_twin_json",
    "update_twin",
]

# What runs in a twin write's transaction once the record is saved: (uow, before, saved).
Written = Callable[[HubUnitOfWork, DeviceIdentity, DeviceIdentity], Awaitable[None]]

# Azure allows 5 levels of nesting in twin properties (10 for tags); we hold patches to 10.
MAX_DEPTH = 10


def _check(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"twin patch nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str) or not key or key.startswith("$"):
                raise InvalidInput("twin property names must be non-empty and must not start with '$'")
            _check(inner, depth + 1)


def merge_patch(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `patch` applied (RFC 7396 semantics; neither argument is changed)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_patch({}, value)  # drops nulls inside a new object
        else:
            out[key] = value
    return out


def _patch(patch: Any) -> Mapping[str, Any]:
    if not isinstance(patch, Mapping):
        raise InvalidInput("a twin patch must be a JSON object")
    cleaned = {k: v for k, v in patch.items() if k != "$version"}
    _check(cleaned, 0)
    return cleaned


def apply_reported_patch(twin: Twin, patch: Any) -> Twin:
    merged = merge_patch(twin.reported, _patch(patch))
    return replace(twin, reported=merged, reported_version=twin.reported_version + 1, version=twin.version + 1)


def apply_desired_patch(twin: Twin, patch: Any) -> Twin:
    merged = merge_patch(twin.desired, _patch(patch))
    return replace(twin, desired=merged, desired_version=twin.desired_version + 1, version=twin.version + 1)


def sdk_twin_json(twin: Twin) -> dict[str, Any]:
    """The twin GET body: both sections with `$version` (the SDK needs `desired.$version`)."""
    return {
        "desired": {**twin.desired, "$version": twin.desired_version},
        "reported": {**twin.reported, "$version": twin.reported_version},
    }


def device_twin_json(device: DeviceIdentity) -> dict[str, Any]:
    """The service-side twin document (the shape of IoT Hub's `GET /twins/{id}`)."""
    twin = device.twin
    return {
        "deviceId": device.device_id,
        "etag": device.etag,
        "version": twin.version,
        "status": device.status,
        "tags": dict(twin.tags),
        "properties": sdk_twin_json(twin),
    }


async def update_twin(
    store: HubStore,
    hub: str,
    device_id: str,
    change: Callable[[Twin], Twin],
    if_match: str | None = None,
    *,
    written: Written | None = None,
) -> DeviceIdentity:
    """Read, change and write a twin; retried when a concurrent writer won the etag race
    (unless the caller asked for a given etag: then the race is theirs to see). `written`
    (the record before, the record saved) runs in the write's transaction: an operator's change
    logs its audit entry there."""
    for attempt in range(5):
        try:
            async with store.begin() as uow:
                device = await uow.devices.get(hub, device_id)
                if device is None:
                    raise NotFound(f"device {device_id} not found on {hub}")
                if if_match not in (None, "*") and if_match != device.etag:
                    raise PreconditionFailed(f"device {device_id} has changed: etag does not match")
                updated = replace(device, twin=change(device.twin))
                saved = await uow.devices.put(updated, if_match=device.etag)
                if written is not None:
                    await written(uow, device, saved)
                return saved
        except PreconditionFailed:
            if if_match not in (None, "*") or attempt == 4:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
