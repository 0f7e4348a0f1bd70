"""What devices sent: recent telemetry, and new telemetry as server-sent events.

GET    /devices/{id}/messages/events        iotdps: recent telemetry of the device
GET    /devices/{id}/messages/events/stream iotdps: new telemetry as server-sent events
GET    /messages/events                     iotdps: recent telemetry of every device of the hub
                                            (what `iotdps telemetry tail --server` polls)
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, cast

from aiohttp import web

from iotdps.api._http import ApiContext, json_response
from iotdps.api.hub_service.common import device_id_in, device_not_found, hub_of
from iotdps.errors import InvalidInput, Throttled
from iotdps.hub.records import TelemetryMessage
from iotdps.ports import HubUnitOfWork
from iotdps.timestamps import format_time

__all__ = ["read_events", "read_hub_events", "stream_events"]

_MAX_EVENTS = 1000


def _event_json(message: TelemetryMessage) -> dict[str, Any]:
    try:
        text: str | None = message.body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "sequenceNumber": message.seq,
        "deviceId": message.device_id,
        "enqueuedTimeUtc": format_time(message.enqueued),
        "body": text,
        "bodyBase64": base64.b64encode(message.body).decode("ascii"),
        "systemProperties": {k: v for k, v in message.system_properties.items() if v is not None},
        "applicationProperties": dict(message.application_properties),
        "moduleId": message.module_id,
    }


async def read_events(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = hub_of(ctx), device_id_in(request)
    limit = _query_int(request, "limit", 100, 1, _MAX_EVENTS)
    after = _query_int(request, "after", None, 0, None)
    async with ctx.store.begin() as uow:
        if await uow.devices.get(hub, device_id) is None:
            raise device_not_found(device_id)
        found = await cast(HubUnitOfWork, uow).telemetry.list(
            hub, device_id, after=after, limit=limit, newest=after is None
        )
    return json_response([_event_json(m) for m in found])


async def read_hub_events(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Every device's telemetry, as `read_events` answers one device's: the newest `limit`, or
    those after the `after` sequenceNumber (a poller's position), oldest first."""
    hub = hub_of(ctx)
    limit = _query_int(request, "limit", 100, 1, _MAX_EVENTS)
    after = _query_int(request, "after", None, 0, None)
    async with ctx.store.read() as uow:
        found = await cast(HubUnitOfWork, uow).telemetry.list(hub, None, after=after, limit=limit, newest=after is None)
    return json_response([_event_json(m) for m in found])


def _query_int(request: web.Request, name: str, default: int | None, low: int, high: int | None) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number") from None
    if value < low or (high is not None and value > high):
        raise InvalidInput(f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}")
    return value


# --------------------------------------------------------------------------- live telemetry

# The stream reads the store (where the hub's writer puts every acknowledged message), so it
# shows what every node of a fleet received, at the cost of a short poll.
_STREAM_POLL = 0.5
_STREAM_HEARTBEAT = 15.0
_STREAM_BATCH = 100
_MAX_STREAMS = 64
_open_streams = 0


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("Last-Event-ID must be a sequenceNumber") from None
    if value < 0:
        raise InvalidInput("Last-Event-ID must be a sequenceNumber")
    return value


async def stream_events(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Server-sent events: each new telemetry message of the device as `event: telemetry`
    (`id:` its sequenceNumber, `data:` the TelemetryEvent JSON), from `after` (or the
    Last-Event-ID a reconnecting EventSource sends) or else from now on, until `timeout`
    seconds have passed; then `event: end` and the stream closes (a client reconnects)."""
    global _open_streams
    hub, device_id = hub_of(ctx), device_id_in(request)
    after = _query_int(request, "after", None, 0, None)
    if after is None:
        after = _last_event_id(request)
    seconds = _query_int(request, "timeout", 300, 1, 3600)
    async with ctx.store.read() as uow:
        if await uow.devices.get(hub, device_id) is None:
            raise device_not_found(device_id)
        if after is None:
            newest = await cast(HubUnitOfWork, uow).telemetry.list(hub, device_id, limit=1, newest=True)
            after = (newest[-1].seq or 0) if newest else 0
    if _open_streams >= _MAX_STREAMS:
        raise Throttled(f"{_MAX_STREAMS} telemetry streams are open; try again later", 5)
    _open_streams += 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b": telemetry of " + device_id.encode() + b"\n\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        quiet_since = loop.time()
        while loop.time() < deadline:
            async with ctx.store.read() as uow:
                found = await cast(HubUnitOfWork, uow).telemetry.list(hub, device_id, after=after, limit=_STREAM_BATCH)
            for message in found:
                data = json.dumps(_event_json(message))
                await response.write(f"id: {message.seq}\nevent: telemetry\ndata: {data}\n\n".encode())
                after = message.seq
            now = loop.time()
            if found:
                quiet_since = now
            elif now - quiet_since >= _STREAM_HEARTBEAT:
                await response.write(b": keep-alive\n\n")
                quiet_since = now
            if len(found) < _STREAM_BATCH:
                await asyncio.sleep(max(0.0, min(_STREAM_POLL, deadline - now)))
        await response.write(b"event: end\ndata: {}\n\n")
    except ConnectionError:
        pass  # the client went away; nothing to answer
    finally:
        _open_streams -= 1
    return response
