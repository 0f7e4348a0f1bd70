"""Which linked hubs a running node serves: the hubs' serving leases, kept by `iotdps up`.

At start a node links the hubs it serves (the configured ones, or the implicit hub that shares
the DPS host name), stamps each with its own lease (an entry of `LinkedHub.served_by` under the
node's id, now + LEASE), unlinks an implicit hub it made under another DPS host name (a first
`up`, then `up --dps-host X` on the same data dir, used to leave `localhost` linked, and hashed
allocation sent half the fleet to a hub nobody served), and reports the linked hubs that no
running node serves. While it runs it renews its leases every RENEW_EVERY seconds; when it
stops it removes them. A node killed outright stops renewing, and its lease runs out within
LEASE seconds.

Several nodes on one PostgreSQL database each hold a lease of their own on the hubs they serve;
a hub is served while any node's lease is live (`served_until` is the latest). A clean stop
removes only the stopping node's lease: the hub stays allocatable through the others, and
becomes unserved at once when the last one stops (it used to end the lease of every node until
their next renewal, and registrations through them failed with "No IoT hub available"). Every
write of a lease drops the other nodes' leases that ran out, so the entries stay a handful.

A lease is written into the hub's row (its document), read under a row lock (FOR UPDATE on
PostgreSQL, SQLite's write lock), so two nodes renewing at once cannot lose one another's
lease. The management API's changes to a hub lock the row too (provisioning/config_admin.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor, record
from iotdps.config import HubConfig
from iotdps.ports import Store
from iotdps.timestamps import format_time

__all__ = ["LEASE", "RENEW_EVERY", "HubLeases", "Unserved"]

log = logging.getLogger("iotdps.hubs")

LEASE = timedelta(seconds=60)
RENEW_EVERY = 20.0
# The audit trail's actor for the hubs a node links or unlinks from its configuration. Lease
# renewals are the nodes' bookkeeping, not changes an operator made, and are not logged.
_STARTUP = Actor("system", "startup-config")


@dataclass(frozen=True, slots=True)
class Unserved:
    """A linked hub that no running node serves, as `up` reports it at start."""

    host_name: str
    served_until: datetime | None  # None: no node has ever served it

    def warning(self) -> str:
        if self.served_until is None:
            return (
                f"linked hub {self.host_name} is served by no running iotdps node (none has ever served it): "
                "devices allocated to it cannot connect; serve it ([[hubs]] in the config) or unlink it "
                f"(iotdps hub remove {self.host_name})"
            )
        return (
            f"linked hub {self.host_name} is served by no running iotdps node (last served until "
            f"{format_time(self.served_until)}): allocation skips it; serve it ([[hubs]] in the config) or "
            f"unlink it (iotdps hub remove {self.host_name})"
        )


class HubLeases:
    def __init__(
        self, store: Store, hubs: Sequence[HubConfig], *, implicit: bool, node: str, now: Callable[[], datetime]
    ) -> None:
        """`hubs`: what this node serves; `implicit`: they are the implicit hub (none configured);
        `node`: this node's id, under which its leases are kept (unique among running nodes)."""
        self._store = store
        self.node = node
        self._hubs = tuple(hubs)
        self._implicit = implicit
        self._now = now
        self._task: asyncio.Task[None] | None = None

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.host_name for h in self._hubs)

    async def claim(self) -> list[Unserved]:
        """Link and lease the hubs this node serves; return the linked hubs nobody serves."""
        now = self._now()
        until = now + LEASE
        mine = {h.host_name.lower(): h for h in self._hubs}
        async with self._store.begin() as uow:
            existing = {h.host_name.lower(): h for h in await uow.hubs.list()}
            for name, hub in existing.items():
                if hub.implicit and name not in mine:
                    # An implicit hub made under an earlier DPS host name: nobody configured it,
                    # so nobody will serve it again.
                    await uow.hubs.delete(hub.host_name)
                    await record(uow, _STARTUP, "hub.unlink", f"hub/{hub.host_name}", before=hub)
                    log.info("unlinked the implicit hub %s: this node serves %s", hub.host_name, ", ".join(mine))
            for name, config in sorted(mine.items()):
                # Read again under the hub's lock, whatever the list said: another node may be
                # linking it or writing its lease on it at this moment. In name order, as
                # _write locks them: two nodes serving the same hubs cannot deadlock.
                spelled = existing[name].host_name if name in existing else config.host_name
                current = await uow.hubs.get(spelled, for_update=True)
                saved = await uow.hubs.put(self._leased(self._served(current, config), until, now))
                if current is None or _settings(current) != _settings(saved):
                    action = "hub.update" if current is not None else "hub.link"
                    await record(uow, _STARTUP, action, f"hub/{saved.host_name}", before=current, after=saved)
            others = [h for name, h in existing.items() if name not in mine and not h.implicit]
        return [Unserved(h.host_name, h.served_until) for h in others if h.served_until is None or h.unserved(now)]

    def _served(self, current: LinkedHub | None, config: HubConfig) -> LinkedHub:
        """The hub's settings as this node serves it (its lease comes next, from _leased)."""
        if current is None:
            return LinkedHub(config.host_name, config.weight, config.apply_allocation_policy, implicit=self._implicit)
        if self._implicit:
            # The operator may have tuned the implicit hub through the API: keep that.
            return current
        # Configured hubs: weights and policy follow the file; the location is the API's.
        return replace(
            current,
            allocation_weight=config.weight,
            apply_allocation_policy=config.apply_allocation_policy,
            implicit=False,
        )

    def _leased(self, hub: LinkedHub, until: datetime | None, now: datetime) -> LinkedHub:
        """`hub` with this node's lease ending at `until` (None: removed) and the other nodes'
        leases that ran out by `now` dropped."""
        leases = {node: end for node, end in hub.served_by if node != self.node and end > now}
        if until is not None:
            leases[self.node] = until
        if not leases:
            # The last lease ended: unserved from now on, and the hub says since when.
            return replace(hub, served_by=(), served_until=now)
        return replace(hub, served_by=tuple(sorted(leases.items())), served_until=max(leases.values()))

    async def renew(self) -> None:
        """Extend this node's leases."""
        now = self._now()
        await self._write(now + LEASE, now)

    async def release(self) -> None:
        """Remove this node's leases: a hub no other node serves is unserved at once."""
        await self._write(None, self._now())

    async def _write(self, until: datetime | None, now: datetime) -> None:
        async with self._store.begin() as uow:
            for name in sorted(self.host_names, key=str.lower):
                current = await uow.hubs.get(name, for_update=True)
                if current is not None:  # unlinked by an operator while we run: leave it so
                    await uow.hubs.put(self._leased(current, until, now))

    def start_renewing(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await self.renew()
            except Exception:  # the store may be briefly unavailable; the lease outlasts two misses
                log.warning("renewing the hubs' serving lease failed", exc_info=True)

    async def stop(self) -> None:
        """Stop renewing and remove this node's leases: it no longer serves its hubs."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.release()
        except Exception:  # stopping anyway; the lease runs out by itself within LEASE
            log.warning("ending the hubs' serving lease failed", exc_info=True)


def _settings(hub: LinkedHub) -> LinkedHub:
    """What an operator set of a hub: everything but the leases."""
    return replace(hub, served_until=None, served_by=())
