"""Hub operations that reach a device on whichever node holds its connection (NATS fan-out).

Implements `iotdps.ports.LiveDevices` for a node of a cluster: what the device's connection is
here, `HubConnections` does; otherwise the request crosses NATS to the node that holds it.

Why NATS and not PostgreSQL LISTEN/NOTIFY: a direct method is request/reply with a deadline,
which NATS has built in (a reply inbox per request), while NOTIFY is fire-and-forget, needs a
dedicated database connection per node, and goes through the database's WAL and commit path,
which is the cluster's scarce resource. NATS is also where telemetry consumers subscribe
(server/telemetry_routes.py), so one broker serves both.

Subjects (`<p>` is the configured prefix, "iotdps" by default):
    <p>.presence           broadcast: {"node", "hub", "device", "connected"}
    <p>.c2d                broadcast: {"hub", "device"}: deliver queued C2D if it is yours
    <p>.desired            broadcast: {"hub", "device", "patch", "version"}
    <p>.disconnect         broadcast: {"hub", "device", "reason"}
    <p>.recheck            broadcast: {"hub", "device"}: its identity changed, re-check it if yours
    <p>.node.<id>.method   request/reply to the node holding the device
Broadcasts, not messages to the holder, for what needs no answer: a device that moved a moment
ago is still reached, and a node that does not hold the device drops the message.

Presence: where each device is lives in the database (`ClusterPresence`, with each node's
lease), and every node mirrors it in memory so `is_connected` needs no query. The mirror is
updated by presence broadcasts and reloaded from the database every heartbeat, which also
drops the devices of a node whose lease ran out (it died without saying so): a dead node's
devices read as disconnected at most `lease + heartbeat` seconds after its last heartbeat.
A device connecting here that another node still holds is closed there (one connection per
device, as on IoT Hub), by the presence broadcast.

Anything on the bus may be wrong or forged (another client of the broker, a bug, a node of
another version): a message that is not a JSON object of the right shape (strings for hub,
device and node, at most 64 KiB, bounded nesting, a finite method timeout of at most 300 s)
is dropped and counted, never raised. A presence message that would close a device's
connection here is believed only when the database's presence says the same node holds the
device (the sender writes it there before it broadcasts), so a forged node id cannot cut
devices off (tests/attack/test_cluster_messages.py). A forged recheck costs one read: the
node re-checks against the stored identity and drops nothing that identity still accepts.

Method timeouts are unchanged: the caller's `timeout` is the device's; the NATS request waits
that long plus a small margin for the hop, and a hop that times out is a MethodTimeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from iotdps.errors import IotdpsError
from iotdps.hub.cloud import MAX_METHOD_TIMEOUT
from iotdps.hub.errors import DeviceNotConnected, MethodTimeout
from iotdps.jsonload import InvalidJson, load_json
from iotdps.ports import ClusterPresence, LiveDevices

__all__ = ["HOP_MARGIN", "ClusterLive"]

log = logging.getLogger(__name__)

# Added to a method's timeout for the NATS hop there and back.
HOP_MARGIN = 2.0
# A cluster message is a few names and, for desired patches and method payloads, a document
# the API already bounded; anything larger is not ours.
MAX_MESSAGE = 64 * 1024
_MAX_NAME = 256


class ClusterLive:
    def __init__(
        self,
        local: LiveDevices,
        presence: ClusterPresence,
        nats: Nats,
        node_id: str,
        *,
        prefix: str = "iotdps",
        heartbeat: float = 2.0,
        lease: float = 10.0,
    ) -> None:
        self._local = local
        self._db = presence
        self._nats = nats
        self.node_id = node_id
        self._prefix = prefix
        self.heartbeat = heartbeat
        self.lease = lease
        self._remote: dict[tuple[str, str], str] = {}
        self._writes: asyncio.Queue[tuple[str, str, bool] | None] = asyncio.Queue()
        self._tasks: tuple[asyncio.Task[None], asyncio.Task[None]] | tuple[()] = ()
        self._subs: list[Any] = []
        # Closes this node's connection of a device that connected elsewhere (HubConnections).
        self.disconnect_local: Callable[[str, str, str], bool] = local.disconnect
        self.dropped = 0  # cluster messages dropped as malformed or forged

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._db.heartbeat(self.node_id)
        await self._db.reap(self.lease)
        p = self._prefix
        for subject, handler in (
            (f"{p}.presence", self._on_presence),
            (f"{p}.c2d", self._on_c2d),
            (f"{p}.desired", self._on_desired),
            (f"{p}.disconnect", self._on_disconnect),
            (f"{p}.recheck", self._on_recheck),
            (f"{p}.node.{self.node_id}.method", self._on_method),
        ):
            self._subs.append(await self._nats.subscribe(subject, cb=handler))
        await self._reload()
        loop = asyncio.get_running_loop()
        self._tasks = (
            loop.create_task(self._beat(), name="cluster-heartbeat"),
            loop.create_task(self._write_presence(), name="cluster-presence"),
        )

    async def stop(self) -> None:
        """Leave the cluster: stop answering, then drop this node's presence and lease."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._writes.put_nowait(None)
        writer = self._tasks[1] if self._tasks else None
        if writer is not None:
            # Let the presence writes queued so far finish (bounded), then stop the heartbeat.
            await asyncio.wait([writer], timeout=10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._db.leave(self.node_id)
        except IotdpsError as exc:
            log.warning("leaving the cluster: %s (the lease will run out instead)", exc.message)

    def local_presence(self, hub: str, device_id: str, connected: bool) -> None:
        """HubConnections.on_presence: a device connected here or left."""
        if connected:
            self._remote.pop((hub, device_id), None)
        self._writes.put_nowait((hub, device_id, connected))

    async def _write_presence(self) -> None:
        # One task, in order: a quick connect-disconnect is never written the wrong way round.
        while (item := await self._writes.get()) is not None:
            hub, device_id, connected = item
            try:
                if connected:
                    await self._db.set_present(hub, device_id, self.node_id)
                else:
                    await self._db.set_absent(hub, device_id, self.node_id)
                body = {"node": self.node_id, "hub": hub, "device": device_id, "connected": connected}
                await self._publish("presence", body)
            except Exception as exc:  # the next heartbeat's reload heals what was missed
                log.warning("presence of %s/%s not shared: %s", hub, device_id, _why(exc))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._db.heartbeat(self.node_id)
                reaped = await self._db.reap(self.lease)
                if reaped:
                    log.info("%d devices of nodes whose lease ran out are now disconnected", reaped)
                await self._reload()
            except Exception as exc:
                log.warning("cluster heartbeat failed: %s", _why(exc))

    async def _reload(self) -> None:
        where = await self._db.presence(self.lease)
        self._remote = {key: node for key, node in where.items() if node != self.node_id}

    # -- LiveDevices ------------------------------------------------------------------------------

    def is_connected(self, hub: str, device_id: str) -> bool:
        return self._local.is_connected(hub, device_id) or (hub, device_id) in self._remote

    def connected_count(self, hub: str) -> int:
        return self._local.connected_count(hub) + sum(1 for h, _d in self._remote if h == hub)

    def disconnect(self, hub: str, device_id: str, reason: str) -> bool:
        if self._local.disconnect(hub, device_id, reason):
            return True
        if (hub, device_id) not in self._remote:
            return False
        self._spawn_publish("disconnect", {"hub": hub, "device": device_id, "reason": reason})
        return True

    def recheck(self, hub: str, device_id: str) -> None:
        # Every registration ends here: a broadcast only when another node holds the device.
        self._local.recheck(hub, device_id)
        if (hub, device_id) in self._remote:
            self._spawn_publish("recheck", {"hub": hub, "device": device_id})

    async def push_desired(self, hub: str, device_id: str, patch: Mapping[str, Any], version: int) -> None:
        if self._local.is_connected(hub, device_id):
            await self._local.push_desired(hub, device_id, patch, version)
        elif (hub, device_id) in self._remote:
            await self._publish("desired", {"hub": hub, "device": device_id, "patch": dict(patch), "version": version})

    def deliver_c2d(self, hub: str, device_id: str) -> None:
        if self._local.is_connected(hub, device_id):
            self._local.deliver_c2d(hub, device_id)
        else:
            # Broadcast even when the mirror does not know the device: it may be connecting
            # somewhere right now, and a node that does not hold it ignores this.
            self._spawn_publish("c2d", {"hub": hub, "device": device_id})

    async def call_method(self, hub: str, device_id: str, name: str, payload: bytes, timeout: float) -> tuple[int, Any]:
        if self._local.is_connected(hub, device_id):
            return await self._local.call_method(hub, device_id, name, payload, timeout)
        node = self._remote.get((hub, device_id))
        if node is None:
            raise DeviceNotConnected(f"device {device_id} is not connected to {hub}")
        request = {
            "hub": hub,
            "device": device_id,
            "name": name,
            "payload": base64.b64encode(payload).decode("ascii"),
            "timeout": timeout,
        }
        try:
            reply = await self._nats.request(
                f"{self._prefix}.node.{node}.method", json.dumps(request).encode(), timeout=timeout + HOP_MARGIN
            )
        except NoRespondersError:
            raise DeviceNotConnected(f"device {device_id} is not connected to {hub}") from None
        except NatsTimeout:
            raise MethodTimeout(f"device {device_id} did not answer method {name!r} within {timeout:g} s") from None
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error == "timeout":
            raise MethodTimeout(str(answer.get("message", "")))
        if error is not None:
            raise DeviceNotConnected(str(answer.get("message", f"device {device_id} is not connected to {hub}")))
        return int(answer["status"]), answer.get("payload")

    # -- what other nodes ask of this one ----------------------------------------------------------

    def _checked(self, msg: Msg, *names: str) -> dict[str, Any] | None:
        """The message's JSON object when it has each of `names` as a short string; else None,
        counted (and never an exception into the NATS client's callback)."""
        body = _body(msg)
        if body is None or not all(_is_name(body.get(n)) for n in names):
            self.dropped += 1
            return None
        return body

    async def _on_presence(self, msg: Msg) -> None:
        body = self._checked(msg, "node", "hub", "device")
        if body is None or body["node"] == self.node_id:
            return
        key, node = (body["hub"], body["device"]), body["node"]
        if body.get("connected") is True:
            if self._local.is_connected(*key):
                # It connected elsewhere, so a connection of it here is stale, if the database
                # agrees: the sender wrote its presence there before it said so on the bus.
                try:
                    holder = (await self._db.presence(self.lease)).get(key)
                except Exception as exc:
                    log.warning("presence of %s/%s not checked: %s", key[0], key[1], _why(exc))
                    return
                if holder != node:
                    self.dropped += 1
                    log.warning("presence message for %s/%s names node %r, the database does not", *key, node)
                    return
                self.disconnect_local(key[0], key[1], "replaced by a new connection of the same device on another node")
            self._remote[key] = node
        elif body.get("connected") is False and self._remote.get(key) == node:
            del self._remote[key]

    async def _on_c2d(self, msg: Msg) -> None:
        body = self._checked(msg, "hub", "device")
        if body is not None:
            self._local.deliver_c2d(body["hub"], body["device"])

    async def _on_desired(self, msg: Msg) -> None:
        body = self._checked(msg, "hub", "device")
        if body is None:
            return
        version = body.get("version")
        if not isinstance(body.get("patch"), dict) or not isinstance(version, int) or isinstance(version, bool):
            self.dropped += 1
            return
        await self._local.push_desired(body["hub"], body["device"], body["patch"], version)

    async def _on_disconnect(self, msg: Msg) -> None:
        body = self._checked(msg, "hub", "device")
        if body is not None:
            self._local.disconnect(body["hub"], body["device"], str(body.get("reason", ""))[:_MAX_NAME])

    async def _on_recheck(self, msg: Msg) -> None:
        body = self._checked(msg, "hub", "device")
        if body is not None:
            self._local.recheck(body["hub"], body["device"])

    async def _on_method(self, msg: Msg) -> None:
        body = self._checked(msg, "hub", "device", "name")
        if body is None or not msg.reply:
            return
        try:
            payload = base64.b64decode(str(body["payload"]), validate=True)
            timeout = float(body["timeout"])
            if not 0 < timeout <= MAX_METHOD_TIMEOUT:  # also refuses NaN
                raise ValueError("timeout")
            status, value = await self._local.call_method(
                str(body["hub"]), str(body["device"]), str(body["name"]), payload, timeout
            )
            answer: dict[str, Any] = {"status": status, "payload": value}
        except MethodTimeout as exc:
            answer = {"error": "timeout", "message": exc.message}
        except DeviceNotConnected as exc:
            answer = {"error": "not_connected", "message": exc.message}
        except (KeyError, ValueError, TypeError):
            answer = {"error": "bad_request", "message": "malformed method request"}
        with contextlib.suppress(Exception):
            await msg.respond(json.dumps(answer).encode())

    # -- helpers ----------------------------------------------------------------------------------

    async def _publish(self, what: str, body: Mapping[str, Any]) -> None:
        await self._nats.publish(f"{self._prefix}.{what}", json.dumps(body).encode())

    def _spawn_publish(self, what: str, body: Mapping[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(what, body))
        task.add_done_callback(_log_failure)


def _body(msg: Msg) -> dict[str, Any] | None:
    if len(msg.data) > MAX_MESSAGE:
        return None
    try:
        body = load_json(msg.data, what="a cluster message")
    except InvalidJson:
        return None
    return body if isinstance(body, dict) else None


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_NAME


def _why(exc: BaseException) -> str:
    return exc.message if isinstance(exc, IotdpsError) else type(exc).__name__


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster message not sent: %s", _why(task.exception()))  # type: ignore[arg-type]
