"""Writing the service's configuration: linked hubs and settings, each change with its audit
entry in the same transaction (iotdps.audit). The management API, the CLI and the server's
startup (hubs and the first ID scope from its configuration) call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor, record
from iotdps.errors import NotFound
from iotdps.ports import Store
from iotdps.provisioning.settings import ServiceSettings

__all__ = ["link_hub", "put_settings", "unlink_hub", "update_hub"]


async def link_hub(store: Store, hub: LinkedHub, *, actor: Actor) -> LinkedHub:
    """Link a hub, or replace a linked hub's settings. The settings are the operator's; the
    serving lease stays the nodes' (allocation.hubs), and a hub an operator set is no longer
    the implicit one. The row is read locked: a node writing its lease at the same moment
    (wiring/hub_leases.py) is not overwritten with the leases read before it."""
    async with store.begin() as uow:
        before = await uow.hubs.get(hub.host_name, for_update=True)
        until, by = (before.served_until, before.served_by) if before is not None else (None, ())
        saved = await uow.hubs.put(replace(hub, served_until=until, served_by=by, implicit=False))
        action = "hub.update" if before is not None else "hub.link"
        await record(uow, actor, action, f"hub/{saved.host_name}", before=before, after=saved)
        return saved


async def update_hub(
    store: Store, host_name: str, change: Callable[[LinkedHub], LinkedHub], *, actor: Actor
) -> LinkedHub:
    """Change a linked hub with `change(current)`; NotFound when it is not linked. Locked, as
    link_hub is, against the nodes' lease writes."""
    async with store.begin() as uow:
        before = await uow.hubs.get(host_name, for_update=True)
        if before is None:
            raise NotFound(f"hub {host_name} is not linked")
        saved = await uow.hubs.put(change(before))
        await record(uow, actor, "hub.update", f"hub/{saved.host_name}", before=before, after=saved)
        return saved


async def unlink_hub(store: Store, host_name: str, *, actor: Actor) -> LinkedHub:
    async with store.begin() as uow:
        before = await uow.hubs.get(host_name)
        if before is None:
            raise NotFound(f"hub {host_name} is not linked")
        await uow.hubs.delete(host_name)
        await record(uow, actor, "hub.unlink", f"hub/{before.host_name}", before=before)
        return before


async def put_settings(store: Store, settings: ServiceSettings, *, actor: Actor) -> ServiceSettings:
    async with store.begin() as uow:
        before = await uow.settings.get()
        saved = await uow.settings.put(settings)
        detail = {"idScope": saved.id_scope, "allocationPolicy": saved.default_allocation_policy}
        await record(uow, actor, "settings.update", "settings", before=before, after=saved, detail=detail)
        return saved
