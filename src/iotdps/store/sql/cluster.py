"""What nodes sharing one PostgreSQL database keep there besides the service's records:
sealed shared secrets, node leases and device presence (tables.py, revision 0007).

Implements `iotdps.ports.ClusterPresence`. Every time is the database's `now()`: the lease of a
node is judged by one clock, whatever the nodes' own clocks say. A node's lease is live while
its heartbeat is younger than `lease` seconds; presence rows of a node whose lease ran out
name a device that is no longer connected anywhere (the node died without saying so), and
`reap` removes them.

Only PostgreSQL is supported: SQLite is one file on one machine, so one node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.audit import AuditDraft
from iotdps.errors import StoreError
from iotdps.ports import Store
from iotdps.store import tables as t
from iotdps.store.sql.audit import AuditTrail
from iotdps.store.sql.engine import DB_ERRORS, describe_error
from iotdps.store.sql.store import SqlStore
from iotdps.store.sql.tx import Database, SqlTx

__all__ = ["ClusterDb", "cluster_db"]


def cluster_db(store: Store) -> ClusterDb | None:
    """The cluster tables of `store`, when it is a PostgreSQL store (None otherwise)."""
    if isinstance(store, SqlStore) and isinstance(store.engine, AsyncEngine):
        # A Database of its own (the store's clock) for the audit entry a swap may append.
        return ClusterDb(store.engine, Database(store.engine, store.clock, store.refusal_limit, store.prune_every))
    return None


class ClusterDb:
    def __init__(self, engine: AsyncEngine, database: Database | None = None) -> None:
        self._engine = engine
        self._database = database

    async def _run(self, statement: object, *, scalar: bool = False) -> object:
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(statement)  # type: ignore[call-overload]
                return result.scalar() if scalar else result.all() if result.returns_rows else None
        except DB_ERRORS as exc:
            raise describe_error(exc, self._engine.url) from None

    # -- shared secrets ---------------------------------------------------------------------------

    async def get_secret(self, name: str) -> str | None:
        value = await self._run(select(t.service_secrets.c.value).where(t.service_secrets.c.name == name), scalar=True)
        return value if isinstance(value, str) else None

    async def put_secret_if_absent(self, name: str, value: str) -> str:
        """Store `value` unless a value is there already; the value stored now (ours, or the
        one a node that started at the same moment stored first)."""
        await self._run(
            insert(t.service_secrets)
            .values(name=name, value=value, updated=func.now())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stored = await self.get_secret(name)
        if stored is None:
            raise StoreError(f"the shared secret {name!r} vanished while it was being stored")
        return stored

    async def swap_secrets(
        self,
        lock: str,
        expected: Mapping[str, str | None],
        new: Mapping[str, str],
        *,
        audit: AuditDraft | None = None,
    ) -> bool:
        """Write `new` (upserts) in one transaction if every name in `expected` still holds the
        value given (None: absent); False, writing nothing, when one changed meanwhile.
        `audit`: the audit trail's entry for the change, appended in the same transaction (a
        step of the server CA rotation: both commit or neither).

        The row `lock` (which must exist) is locked first: two writers that both expect a row
        to be absent would otherwise both insert it; behind the lock the second one re-reads."""
        if audit is not None and self._database is None:
            raise StoreError("this cluster database was opened without its store: it cannot write the audit trail")
        s = t.service_secrets.c
        try:
            async with self._engine.begin() as conn:
                locked = await conn.execute(select(s.value).where(s.name == lock).with_for_update())
                if locked.first() is None:
                    raise StoreError(f"the shared secret {lock!r} is missing from the database")
                rows = await conn.execute(select(s.name, s.value).where(s.name.in_(list(expected))))
                found: dict[str, str | None] = {str(r[0]): str(r[1]) for r in rows.all()}
                if any(found.get(name) != value for name, value in expected.items()):
                    return False
                for name, value in new.items():
                    stmt = insert(t.service_secrets).values(name=name, value=value, updated=func.now())
                    await conn.execute(
                        stmt.on_conflict_do_update(
                            index_elements=["name"], set_={"value": value, "updated": func.now()}
                        )
                    )
                if audit is not None:
                    assert self._database is not None
                    # Last, as an admin change does: the chain's lock is held only until the commit.
                    await AuditTrail(SqlTx(self._database, conn)).append(audit)
                return True
        except DB_ERRORS as exc:
            raise describe_error(exc, self._engine.url) from None

    # -- node leases ------------------------------------------------------------------------------

    async def heartbeat(self, node_id: str) -> None:
        stmt = insert(t.cluster_nodes).values(node_id=node_id, started=func.now(), heartbeat=func.now())
        await self._run(stmt.on_conflict_do_update(index_elements=["node_id"], set_={"heartbeat": func.now()}))

    async def leave(self, node_id: str) -> None:
        """A node that stops cleanly: its presence rows and its lease go at once."""
        await self._run(delete(t.device_presence).where(t.device_presence.c.node_id == node_id))
        await self._run(delete(t.cluster_nodes).where(t.cluster_nodes.c.node_id == node_id))

    async def live_nodes(self, lease: float) -> list[str]:
        rows = await self._run(
            select(t.cluster_nodes.c.node_id).where(t.cluster_nodes.c.heartbeat > func.now() - _seconds(lease))
        )
        assert isinstance(rows, list)
        return sorted(str(row[0]) for row in rows)

    async def reap(self, lease: float) -> int:
        """Forget the devices and leases of nodes whose lease ran out; the devices forgotten."""
        dead = select(t.cluster_nodes.c.node_id).where(t.cluster_nodes.c.heartbeat <= func.now() - _seconds(lease))
        live = select(t.cluster_nodes.c.node_id).where(t.cluster_nodes.c.heartbeat > func.now() - _seconds(lease))
        try:
            async with self._engine.begin() as conn:
                # Rows of a node with no lease row at all (it was reaped, or never beat) go too.
                result = await conn.execute(
                    delete(t.device_presence).where(t.device_presence.c.node_id.not_in(live.scalar_subquery()))
                )
                await conn.execute(delete(t.cluster_nodes).where(t.cluster_nodes.c.node_id.in_(dead.scalar_subquery())))
                return int(result.rowcount or 0)
        except DB_ERRORS as exc:
            raise describe_error(exc, self._engine.url) from None

    # -- device presence --------------------------------------------------------------------------

    async def set_present(self, hub: str, device_id: str, node_id: str) -> None:
        stmt = insert(t.device_presence).values(hub=hub, device_id=device_id, node_id=node_id, since=func.now())
        await self._run(
            stmt.on_conflict_do_update(
                index_elements=["hub", "device_id"], set_={"node_id": node_id, "since": func.now()}
            )
        )

    async def set_absent(self, hub: str, device_id: str, node_id: str) -> None:
        """Only the node that holds the device's connection clears it: a device that already
        reconnected elsewhere stays present there."""
        p = t.device_presence.c
        await self._run(
            delete(t.device_presence).where(and_(p.hub == hub, p.device_id == device_id, p.node_id == node_id))
        )

    async def presence(self, lease: float) -> Mapping[tuple[str, str], str]:
        """(hub, device id) -> node id, for devices held by nodes whose lease is live."""
        p, n = t.device_presence.c, t.cluster_nodes.c
        rows = await self._run(
            select(p.hub, p.device_id, p.node_id)
            .join(t.cluster_nodes, n.node_id == p.node_id)
            .where(n.heartbeat > func.now() - _seconds(lease))
        )
        assert isinstance(rows, list)
        return {(str(r[0]), str(r[1])): str(r[2]) for r in rows}


def _seconds(value: float) -> Any:
    # make_interval(years, months, weeks, days, hours, mins, secs): a bound number, no SQL text.
    return func.make_interval(0, 0, 0, 0, 0, 0, float(value))
