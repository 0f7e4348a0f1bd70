"""Audit entries for what an operator changes on a hub: device identities and twins.

    hub-device.create   an identity created (hub service API PUT /devices/{id})
    hub-device.update   its status, credential or capabilities changed (PUT with If-Match,
                        `iotdps device disable/enable`)
    hub-device.delete   an identity deleted (DELETE /devices/{id}, `iotdps device delete`)
    hub-twin.update     its tags or desired properties changed (PATCH/PUT /twins/{id},
                        `iotdps twin update-desired`)

The target is `<hub>/<deviceId>`. The before/after digests are of what an operator can read
back (`IdentityRecord`, `TwinRecord`), never of the keys: a SAS key is not in an entry, not
even hashed; the detail only says whether the keys changed.

Deliberately not audited: what devices do (telemetry, reported properties, cloud-to-device
delivery and acknowledgements) and cloud-to-device sends. They are the data plane, as many as
the devices make them; the log is for who changed the registry, and would drown in them.

Each entry is appended through `iotdps.audit.record`, in the unit of work of the change; the
action names are listed with the others in `iotdps.audit.actions.KNOWN_ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iotdps.audit import Actor, record
from iotdps.audit.chain import MAX_TARGET
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.ports import HubUnitOfWork

__all__ = ["IdentityRecord", "TwinRecord", "device_target", "record_identity", "record_twin"]


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """What an entry digests of an identity: its readable parts and whether it has keys."""

    hub: str
    device_id: str
    status: str
    iot_edge: bool
    auth_type: str
    has_primary_key: bool
    has_secondary_key: bool
    primary_thumbprints: tuple[str, ...]
    secondary_thumbprints: tuple[str, ...]
    issued_thumbprints: tuple[str, ...]
    etag: str | None

    @staticmethod
    def of(device: DeviceIdentity | None) -> IdentityRecord | None:
        if device is None:
            return None
        auth = device.auth
        return IdentityRecord(
            device.hub,
            device.device_id,
            device.status,
            device.iot_edge,
            auth.type,
            auth.primary_key is not None,
            auth.secondary_key is not None,
            auth.primary_thumbprints,
            auth.secondary_thumbprints,
            auth.issued_thumbprints,
            device.etag,
        )


@dataclass(frozen=True, slots=True)
class TwinRecord:
    """What an entry digests of a twin: the sections an operator writes (tags, desired)."""

    hub: str
    device_id: str
    tags: Mapping[str, Any]
    desired: Mapping[str, Any]
    desired_version: int
    version: int
    etag: str | None

    @staticmethod
    def of(device: DeviceIdentity) -> TwinRecord:
        twin = device.twin
        return TwinRecord(
            device.hub,
            device.device_id,
            dict(twin.tags),
            dict(twin.desired),
            twin.desired_version,
            twin.version,
            device.etag,
        )


def device_target(hub: str, device_id: str) -> tuple[str, dict[str, Any]]:
    """`<hub>/<deviceId>` and what the detail must add: a host name and a device id can be
    longer together than a target may be, and then the hub name is shortened and given whole
    in the detail (the device id always stays whole)."""
    target = f"{hub}/{device_id}"
    if len(target) <= MAX_TARGET:
        return target, {}
    return f"{hub[: MAX_TARGET - len(device_id) - 2]}~/{device_id}", {"hub": hub}


def _keys(auth: DeviceAuth) -> tuple[str | None, str | None]:
    return (
        auth.primary_key.reveal() if auth.primary_key else None,
        auth.secondary_key.reveal() if auth.secondary_key else None,
    )


async def record_identity(
    uow: HubUnitOfWork, actor: Actor, action: str, before: DeviceIdentity | None, after: DeviceIdentity | None
) -> None:
    """Log an identity's creation (`before` None), change or deletion (`after` None)."""
    subject = after if after is not None else before
    if subject is None:  # pragma: no cover - a change has a record on one side at least
        raise ValueError("an identity change needs the record before or after it")
    target, detail = device_target(subject.hub, subject.device_id)
    if after is not None:
        detail["authType"] = after.auth.type
        detail["status"] = after.status
    if before is not None and after is not None:
        # Whether, never what: the keys stay out of the log.
        detail["keysChanged"] = _keys(before.auth) != _keys(after.auth)
        detail["credentialChanged"] = before.auth != after.auth
    await record(
        uow, actor, action, target, before=IdentityRecord.of(before), after=IdentityRecord.of(after), detail=detail
    )


async def record_twin(
    uow: HubUnitOfWork, actor: Actor, before: DeviceIdentity, after: DeviceIdentity, sections: Sequence[str]
) -> None:
    """Log an operator's change of a twin's `sections` (tags, desired)."""
    target, detail = device_target(after.hub, after.device_id)
    detail["sections"] = list(sections)
    detail["version"] = after.twin.version
    await record(
        uow, actor, "hub-twin.update", target, before=TwinRecord.of(before), after=TwinRecord.of(after), detail=detail
    )
