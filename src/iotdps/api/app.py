"""The management API as an aiohttp application (the lead serves it over TLS).

Every route of `routes.ROUTES` is checked (api.auth) for a SharedAccessSignature granting its
permission before its handler runs; every error, ours or aiohttp's (unknown path, wrong method), leaves as
the JSON error body of `api.errors`. `/openapi.json` (no credentials needed) is generated from
the same route table.

Hub service API routes (`scope == "hub"`) are served for the hub the request's Host names
(the SDK's connection string HostName), or the `x-iotdps-hub` header when present (a browser
cannot choose its Host); the token's `sr` must name that hub too.

The console (iotdps.web) signs in once and then calls these same routes with a session
cookie instead of a token: `AccessPolicies.authorize` (iotdps.access) maps the session to its
policies and checks the same permission per route, plus a CSRF token on every change.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from iotdps.access import AccessPolicies, SessionGate
from iotdps.allocation.destinations import WebhookDestinations
from iotdps.api._http import ApiContext, ServiceAbout
from iotdps.api.auth import RequestHandler, guarded
from iotdps.api.errors import error_response, response_for
from iotdps.api.openapi import openapi_document
from iotdps.api.routes import ROUTES
from iotdps.errors import IotdpsError
from iotdps.issuance.sealing import SealingKey
from iotdps.ports import HubOperations, Store
from iotdps.provisioning.service import ProvisioningService

__all__ = ["build_management_app"]

_HTTP_CODES = {404: (404000, "NotFound"), 405: (405000, "MethodNotAllowed"), 413: (400006, "RequestTooLarge")}


@web.middleware
async def _errors(request: web.Request, handler: RequestHandler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IotdpsError as exc:
        return response_for(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, name = _HTTP_CODES.get(exc.status, (exc.status * 1000, "HttpError"))
        status = 400 if exc.status == 413 else exc.status
        message = exc.reason if exc.status != 413 else "the request body is too large"
        response = error_response(status, code, name, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # the last line: a JSON 500, never a traceback
        return response_for(exc)


def build_management_app(
    store: Store,
    service: ProvisioningService,
    policies: AccessPolicies,
    *,
    host_names: Sequence[str],
    max_body: int = 1 << 20,
    on_trust_changed: Callable[[], Awaitable[None]] | None = None,
    hub: HubOperations | None = None,
    hub_hosts: Sequence[str] = (),
    webhook_destinations: WebhookDestinations | None = None,
    sessions: SessionGate | None = None,
    about: ServiceAbout | None = None,
    sealing: SealingKey | None = None,
) -> web.Application:
    """The management API. `host_names`: the names (and addresses) clients reach the service
    by; a token's `sr` must name one of them. `max_body`: the largest request body accepted.
    `on_trust_changed` is awaited after every change of the X.509 trust anchors.
    `hub`: the running hub's cloud operations (iotdps.hub.cloud) and `hub_hosts` the host names of its hubs, for the hub
    service API; without them the hub routes answer 404 (no hub) or 503 (needs the runtime).
    `webhook_destinations`: where an enrollment's custom-allocation webhook may point (default:
    HTTPS to public addresses only).
    `sessions`: the console's session table (iotdps.web), a second way in besides tokens.
    `about`: the endpoints and device host name GET /status reports.
    `sealing`: the key that seals issuing CA secrets (without it they cannot be written)."""
    if not host_names:
        raise ValueError("host_names must name at least one host")
    about = replace(about or ServiceAbout(), hubs_served=tuple(hub_hosts))
    ctx = ApiContext(
        store,
        service,
        max_body,
        on_trust_changed,
        hub,
        webhook_destinations=webhook_destinations or WebhookDestinations(),
        about=about,
        sealing=sealing,
    )
    hubs = {name.lower(): name for name in hub_hosts}
    # client_max_size is a backstop above ours: read_json refuses first with a clearer message.
    app = web.Application(middlewares=[_errors], client_max_size=max_body + 1024)
    names = tuple(host_names)
    document: dict[str, Any] = openapi_document()
    openapi_text = json.dumps(document)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(text=openapi_text, content_type="application/json")

    app.router.add_get("/openapi.json", openapi, allow_head=False)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, guarded(route, ctx, policies, names, hubs, sessions))
    return app
