"""What one route of the management API declares: method, path, handler, the permission a
caller's policy must grant, and what the OpenAPI document says of it (body schema, answers,
headers). The route tables (one module per resource beside this one) are lists of these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from iotdps.access import Permission
from iotdps.api._http import ApiContext

__all__ = ["API_VERSIONS", "HUB_HEADER", "Handler", "Route"]

Handler = Callable[[ApiContext, web.Request], Awaitable[web.StreamResponse]]

# What the official SDKs send (the server answers every version the same way).
API_VERSIONS = ("2021-10-01", "2019-03-31", "2018-09-01-preview", "2025-07-01-preview")
# Names the hub of a hub route when the Host cannot (a browser sets the Host itself): the
# console sends it. The rules stay the same: a token's `sr` must name that hub too.
HUB_HEADER = "x-iotdps-hub"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # the same `{name}` syntax for aiohttp and OpenAPI
    handler: Handler
    permission: Permission | None
    operation_id: str
    summary: str
    tag: str
    body: str | None = None  # schema component name
    body_required: bool = True
    status: int = 200  # the success status
    answer: dict[str, Any] | None = None  # JSON Schema of the success body (None: no body)
    if_match: bool = False
    paged: bool = False
    etag_header: bool = False
    query: tuple[tuple[str, dict[str, Any], str], ...] = ()
    errors: tuple[int, ...] = field(default=(400, 401))
    # "hub": a hub service API route; the request's Host names the hub (api.hub_service).
    scope: str = "dps"
    content_type: str = "application/json"  # of the success body
