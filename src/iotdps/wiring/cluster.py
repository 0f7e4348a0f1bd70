"""A node's part in a cluster: the NATS connection, hub operations across nodes
(server/cluster_live.py) on the shared database's presence tables, assembled and torn down.

Started after the hubs (it wraps their connections) and before the management API (which
must get the cluster-wide cloud operations); stopped before the hubs close their connections,
so this node's devices are cleared from the presence table at once rather than by lease.
"""

from __future__ import annotations

import logging
import secrets

import nats
from nats.aio.client import Client as Nats

from iotdps.config import ClusterConfig
from iotdps.errors import ConfigError
from iotdps.server.cluster_live import ClusterLive
from iotdps.store.sql.cluster import ClusterDb
from iotdps.wiring.hub import Hubs

__all__ = ["Cluster", "connect_nats", "node_id_for"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5.0


async def connect_nats(url: str, name: str) -> Nats:
    """A NATS client that reconnects forever once connected; ConfigError when the first
    connection fails (a node that cannot reach its broker must not pretend to be clustered)."""
    try:
        return await nats.connect(
            url,
            name=name,
            connect_timeout=_CONNECT_TIMEOUT,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
    except Exception as exc:  # nats-py raises several unrelated types for "could not connect"
        raise ConfigError([f"cannot connect to NATS at {url}: {type(exc).__name__}"]) from None


def node_id_for(config: ClusterConfig) -> str:
    """This node's id: the configured one, or a fresh one for this process."""
    return config.node_id or "node-" + secrets.token_hex(4)


class Cluster:
    def __init__(self, config: ClusterConfig, db: ClusterDb, node_id: str) -> None:
        """`node_id`: node_id_for(config), chosen once per process: the hubs' serving leases
        (wiring/hub_leases.py) are kept under the same id."""
        self.config = config
        self.db = db
        self.node_id = node_id
        self.nats: Nats | None = None
        self.live: ClusterLive | None = None

    async def start(self, hubs: Hubs) -> None:
        self.nats = await connect_nats(self.config.nats_url, f"iotdps {self.node_id}")
        live = ClusterLive(
            hubs.connections,
            self.db,
            self.nats,
            self.node_id,
            prefix=self.config.subject_prefix,
            heartbeat=self.config.heartbeat_seconds,
            lease=self.config.lease_seconds,
        )
        hubs.connections.on_presence = live.local_presence
        await live.start()
        hubs.use_live(live)
        self.live = live
        log.info("node %s joined the cluster (NATS %s)", self.node_id, self.config.nats_url)

    async def leave(self) -> None:
        """Stop serving other nodes and clear this node's presence (before the hubs close)."""
        if self.live is not None:
            await self.live.stop()
            self.live = None

    async def stop(self) -> None:
        await self.leave()
        if self.nats is not None:
            try:
                await self.nats.drain()
            except Exception:  # already closed or the broker is gone: nothing left to flush
                log.debug("NATS drain failed", exc_info=True)
