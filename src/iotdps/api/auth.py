"""The API's guard: every route's handler runs only after the request proved a policy that
grants the route's permission (iotdps.access holds the policies and the checks; this module
is only their aiohttp side).

For hub service API routes (`scope == "hub"`) the guard first picks the hub: the one the
request's Host names (the SDK's connection string HostName), or the `x-iotdps-hub` header when
present (a browser cannot choose its Host). The token's `sr` must then name that hub, so a
token for one hub is useless on another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from aiohttp import web

from iotdps.access import AccessPolicies, SessionGate
from iotdps.api._http import ApiContext
from iotdps.api.actor import request_actor
from iotdps.api.errors import ApiError
from iotdps.api.routes import HUB_HEADER, Route

__all__ = ["RequestHandler", "guarded"]

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_host(request: web.Request) -> str:
    """The host part of the Host header (no port, no IPv6 brackets), lower case."""
    raw = (request.headers.get("Host") or "").strip()
    try:
        return (urlsplit("//" + raw).hostname or "").lower()
    except ValueError:
        return ""


def guarded(
    route: Route,
    ctx: ApiContext,
    policies: AccessPolicies,
    host_names: Sequence[str],
    hubs: Mapping[str, str],
    sessions: SessionGate | None,
) -> RequestHandler:
    """`route`'s handler behind the access check. `host_names`: what a DPS route's token may
    name; `hubs`: lower-cased hub host name -> hub, for hub routes."""

    async def handle(request: web.Request) -> web.StreamResponse:
        names, request_ctx = host_names, ctx
        if route.scope == "hub":
            named = request.headers.get(HUB_HEADER)
            hub = hubs.get(named.strip().lower() if named is not None else _request_host(request))
            if hub is None:
                raise ApiError(
                    404,
                    404002,
                    "IotHubNotFound",
                    "the Host of this request names no IoT hub served here; use HostName=<hub host name>:<port>",
                )
            names, request_ctx = (hub,), replace(ctx, hub_name=hub)
        policy = policies.authorize(
            request.headers,
            request.cookies,
            request.method,
            host_names=names,
            path=request.path,
            needed=route.permission,
            sessions=sessions,
        )
        # Who the audit trail names for whatever this request changes.
        actor = request_actor(request.headers, request.cookies, sessions, policy)
        return await route.handler(replace(request_ctx, actor=actor), request)

    handle.__name__ = route.operation_id
    return handle
