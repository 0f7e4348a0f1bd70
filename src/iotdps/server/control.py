"""The hub's local control endpoint: plain HTTP JSON on `<data_dir>/control.sock` (mode 0600).

The CLI runs in another process than the server; method invokes, C2D sends, desired-twin
updates and disconnects need the running hub (its live connections), so they go through here.
The socket's file mode is the access control: only the data dir's owner can reach it.

    GET   /hubs                                            {"hubs": [...], "connections": n}
    POST  /hubs/{hub}/devices/{device}/methods             {"name", "payload", "timeout"}
                                                           -> {"status", "payload"}
    POST  /hubs/{hub}/devices/{device}/messages            {"body" | "bodyBase64", "properties", "ttl"}
                                                           -> {"messageId"}
    PATCH /hubs/{hub}/devices/{device}/twin/desired        {"patch", "ifMatch"} -> twin
    POST  /hubs/{hub}/devices/{device}/disconnect          -> {"disconnected": bool}

Errors: the IotdpsError's HTTP status and {"error": message}. A desired-twin update is logged
in the audit trail as the connecting user (`peer_actor`).
"""

from __future__ import annotations

import base64
import binascii
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from iotdps.audit import Actor
from iotdps.errors import InvalidInput, IotdpsError, NotFound, PreconditionFailed, StoreError, Throttled
from iotdps.hub.cloud import CloudOperations
from iotdps.hub.errors import DeviceNotConnected, MethodTimeout
from iotdps.hub.twin import sdk_twin_json
from iotdps.jsonload import InvalidJson, load_json

__all__ = ["CONTROL_SOCKET_NAME", "ControlClient", "build_control_app", "control_socket_path", "peer_actor"]

CONTROL_SOCKET_NAME = "control.sock"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def control_socket_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_SOCKET_NAME


async def _body(request: web.Request) -> dict[str, Any]:
    doc = load_json(await request.read(), what="the request body")  # raises InvalidJson, an InvalidInput
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    return doc


def peer_actor(request: web.Request) -> Actor:
    """The audit trail's actor for a change asked over the socket: `local:<user>` of the
    connecting process, as the kernel tells it (SO_PEERCRED), not as the client claims;
    `local:control-socket` where the kernel does not say."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or peercred is None:
        return Actor("local", "control-socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    except OSError:
        return Actor("local", "control-socket")
    try:
        return Actor("local", pwd.getpwuid(uid).pw_name)
    except KeyError:  # a container's arbitrary uid has no passwd entry (as cli.actor)
        return Actor("local", f"uid-{uid}")


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except IotdpsError as exc:
            return web.json_response({"error": exc.message, "kind": type(exc).__name__}, status=exc.http_status)

    return wrapped


def build_control_app(operations: CloudOperations, endpoints: Sequence[str] = ()) -> web.Application:
    """The control app over the hub's cloud-side operations (iotdps.hub.cloud). `endpoints`: what
    the server listens on, in the banner's words, for `iotdps status` (read when asked, so the
    ones added after the control socket opened are there too)."""

    async def hubs(request: web.Request) -> web.StreamResponse:
        hubs = list(operations.host_names)
        return web.json_response(
            {"hubs": hubs, "connections": operations.connection_count, "endpoints": list(endpoints)}
        )

    async def method(request: web.Request) -> web.StreamResponse:
        doc = await _body(request)
        timeout = doc.get("timeout", 30)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            raise InvalidInput("timeout must be a number of seconds")
        status, payload = await operations.invoke_method(
            request.match_info["hub"],
            request.match_info["device"],
            str(doc.get("name") or ""),
            doc.get("payload"),
            float(timeout),
        )
        return web.json_response({"status": status, "payload": payload})

    async def message(request: web.Request) -> web.StreamResponse:
        doc = await _body(request)
        if "bodyBase64" in doc:
            try:
                body = base64.b64decode(str(doc["bodyBase64"]), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInput("bodyBase64 is not base64") from None
        else:
            body = str(doc.get("body", "")).encode()
        props = doc.get("properties") or {}
        if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
            raise InvalidInput("properties must map names to strings")
        ttl = doc.get("ttl")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)):
            raise InvalidInput("ttl must be a number of seconds")
        mid = await operations.send_c2d(
            request.match_info["hub"], request.match_info["device"], body, props, None if ttl is None else float(ttl)
        )
        return web.json_response({"messageId": mid})

    async def desired(request: web.Request) -> web.StreamResponse:
        doc = await _body(request)
        patch = doc.get("patch")
        if not isinstance(patch, dict):
            raise InvalidInput("patch must be a JSON object")
        if_match = doc.get("ifMatch")
        twin = await operations.update_desired(
            request.match_info["hub"],
            request.match_info["device"],
            patch,
            str(if_match) if if_match else None,
            actor=peer_actor(request),
        )
        return web.json_response({"version": twin.version, "properties": sdk_twin_json(twin), "tags": dict(twin.tags)})

    async def disconnect(request: web.Request) -> web.StreamResponse:
        done = operations.disconnect(request.match_info["hub"], request.match_info["device"])
        return web.json_response({"disconnected": done})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get("/hubs", _guard(hubs))
    app.router.add_post("/hubs/{hub}/devices/{device}/methods", _guard(method))
    app.router.add_post("/hubs/{hub}/devices/{device}/messages", _guard(message))
    app.router.add_patch("/hubs/{hub}/devices/{device}/twin/desired", _guard(desired))
    app.router.add_post("/hubs/{hub}/devices/{device}/disconnect", _guard(disconnect))
    return app


_ERRORS: dict[str, type[IotdpsError]] = {
    "DeviceNotConnected": DeviceNotConnected,
    "NotFound": NotFound,
    "InvalidInput": InvalidInput,
    "PreconditionFailed": PreconditionFailed,
    "StoreError": StoreError,
}


class ControlClient:
    """The CLI's side of the control socket. Raises IotdpsError subclasses with the server's words."""

    def __init__(self, socket_path: Path, *, timeout: float = 330.0) -> None:
        self._path = socket_path
        self._timeout = timeout

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        if not self._path.exists():
            raise DeviceNotConnected(f"no running iotdps server (no control socket at {self._path})")
        connector = aiohttp.UnixConnector(path=str(self._path))
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout)) as s,
                s.request(method, "http://iotdps" + path, json=body) as response,
            ):
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, OSError) as exc:
            raise StoreError(f"cannot reach the running iotdps server at {self._path}: {type(exc).__name__}") from None
        try:
            doc = load_json(text, what="the server's answer") if text else None
        except InvalidJson:
            doc = None
        if status >= 400:
            message = doc.get("error") if isinstance(doc, dict) else None
            kind = doc.get("kind") if isinstance(doc, dict) else None
            text_message = str(message or f"the server answered HTTP {status}")
            if status == 504:
                raise MethodTimeout(text_message)
            if status == 429:
                raise Throttled(text_message, 60)
            raise _ERRORS.get(str(kind), IotdpsError)(text_message)
        return doc

    @staticmethod
    def device_path(hub: str, device_id: str, tail: str) -> str:
        return f"/hubs/{quote(hub, safe='')}/devices/{quote(device_id, safe='')}/{tail}"
