"""Executing a placement: create, move or update the device's hub identity and its twin.

`provisioning.reprovision` decides (the table: which hub, which substatus, what happens to the
twin); this module carries that out on the store, inside the registration's write transaction.
"""

from __future__ import annotations

from iotdps.allocation.custom import WebhookAllocation
from iotdps.enrollment.models import InitialTwin
from iotdps.hub.devices import DeviceIdentity, Twin
from iotdps.ids import same_registration_id
from iotdps.ports import UnitOfWork
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.registration import RegistrationPlan
from iotdps.provisioning.reprovision import Placement, previous_hub

__all__ = ["place_device", "twin_from"]


async def place_device(
    uow: UnitOfWork,
    plan: RegistrationPlan,
    placement: Placement,
    current: RegistrationRecord | None,
    webhook: WebhookAllocation | None,
) -> DeviceIdentity:
    """Create, move or update the hub identity as the placement says."""
    old: DeviceIdentity | None = None
    before = previous_hub(current)
    if before is not None and current is not None and current.device_id:
        old = await uow.devices.get(before, current.device_id, for_update=True)
    # Locked: the identity is rewritten from what is read here (its twin included), and a
    # twin update the hub commits meanwhile must wait rather than be overwritten.
    existing = await uow.devices.get(placement.hub, plan.device_id, for_update=True)
    initial = (webhook.initial_twin if webhook and webhook.initial_twin else None) or plan.settings.initial_twin

    # The same device under another spelling of its CN (a new certificate, X.509 device ids
    # follow the CN): the identity is renamed on its hub, its twin kept.
    respelled = (
        existing is None
        and old is not None
        and old.hub == placement.hub
        and same_registration_id(old.device_id, plan.device_id)
        and placement.twin == "keep"
    )
    if existing is None:
        # A fresh identity: migrated data when there is some, else the initial twin.
        if (placement.twin == "migrate" or respelled) and old is not None:
            twin = old.twin
        else:
            twin = Twin(tags=dict(initial.tags), desired=dict(initial.desired)) if initial else Twin()
    elif placement.twin == "migrate" and old is not None:
        twin = old.twin
    elif placement.twin == "reset":
        twin = twin_from(initial or InitialTwin(), existing.twin)
    elif placement.twin == "initial":
        # The identity survived a deleted registration record: an initial assignment
        # applies the initial twin when there is one and leaves the twin alone otherwise.
        twin = twin_from(initial, existing.twin)
    else:  # keep
        twin = existing.twin

    if old is not None and (old.hub, old.device_id) != (placement.hub, plan.device_id):
        await uow.devices.delete(old.hub, old.device_id)
    device = DeviceIdentity(
        hub=placement.hub,
        device_id=plan.device_id,
        auth=plan.device_auth,
        status=existing.status if existing is not None else "enabled",
        iot_edge=plan.settings.iot_edge,
        twin=twin,
        registration_id=plan.registration_id,
    )
    return await uow.devices.put(device)


def twin_from(initial: InitialTwin | None, base: Twin) -> Twin:
    """`base` with tags and desired replaced by the initial twin (versions move forward)."""
    if initial is None:
        return base
    desired_changed = dict(initial.desired) != dict(base.desired)
    return Twin(
        tags=dict(initial.tags),
        desired=dict(initial.desired),
        reported=base.reported,
        desired_version=base.desired_version + 1 if desired_changed else base.desired_version,
        reported_version=base.reported_version,
        version=base.version + 1,
    )
