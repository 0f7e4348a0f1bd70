"""What operators read at a glance: the service's status and the hubs' statistics.

    GET /status               iotdps: ID scope, endpoints, linked hubs (served here or not),
                              record counts, assignments and refusals per minute (last hour)
    GET /statistics/devices   IoT Hub: device identities (total, enabled, disabled)
    GET /statistics/service   IoT Hub: devices connected now

The two hub routes are Azure's (`IoTHubRegistryManager.get_device_registry_statistics` and
`get_service_statistics` in azure-iot-hub 2.7.0). Counts come from the store's aggregates
(every node agrees, a restart loses nothing); "connected now" is this process's live
connections, which is what one node knows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from iotdps.api._http import ApiContext, json_response
from iotdps.timestamps import format_time, utcnow

__all__ = ["WINDOW_MINUTES", "device_statistics", "service_statistics", "service_status"]

# The activity series covers this many whole minutes, the current (partial) one last.
WINDOW_MINUTES = 60


def _series(counts: dict[datetime, int] | Any, start: datetime) -> list[int]:
    return [int(counts.get(start + timedelta(minutes=i), 0)) for i in range(WINDOW_MINUTES)]


async def service_status(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    start = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    async with ctx.store.read() as uow:
        settings = await uow.settings.get()
        linked = await uow.hubs.list()
        counts = await uow.stats.counts()
        assigned, refused = await uow.stats.per_minute(start)
    settings = settings or ctx.service.default_settings
    served = {h.lower() for h in ctx.about.hubs_served}
    return json_response(
        {
            "idScope": settings.id_scope if settings is not None else None,
            "deviceProvisioningHostName": ctx.about.device_host,
            "endpoints": list(ctx.about.endpoints),
            "linkedHubs": [
                {
                    "hostName": h.host_name,
                    "allocationWeight": h.allocation_weight,
                    "served": h.host_name.lower() in served,
                }
                for h in linked
            ],
            "enrollments": counts.enrollments,
            "enrollmentGroups": counts.groups,
            "registrations": dict(counts.registrations),
            "perMinute": {
                "start": format_time(start),
                "minutes": WINDOW_MINUTES,
                "assignments": _series(assigned, start),
                "refusals": _series(refused, start),
            },
        }
    )


def _hub(ctx: ApiContext) -> str:
    assert ctx.hub_name is not None  # set by the app for every hub route
    return ctx.hub_name


async def device_statistics(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.read() as uow:
        found = await uow.stats.devices(_hub(ctx))
    return json_response(
        {
            "totalDeviceCount": found.total,
            "enabledDeviceCount": found.enabled,
            "disabledDeviceCount": found.total - found.enabled,
        }
    )


async def service_statistics(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    connected = ctx.hub.connected_count(_hub(ctx)) if ctx.hub is not None else 0
    return json_response({"connectedDeviceCount": connected})
