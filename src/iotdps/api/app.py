"""The management API as an aiohttp application (the lead serves it over TLS).

Every route of `routes.ROUTES` is checked for a SharedAccessSignature granting its permission
before its handler runs; every error, ours or aiohttp's (unknown path, wrong method), leaves as
the JSON error body of `api.errors`. `/openapi.json` (no credentials needed) is generated from
the same route table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from iotdps.api._http import ApiContext
from iotdps.api.auth import AccessPolicies
from iotdps.api.errors import error_response, response_for
from iotdps.api.routes import ROUTES, Route, openapi_document
from iotdps.errors import IotdpsError
from iotdps.provisioning.ports import Store
from iotdps.provisioning.service import ProvisioningService

__all__ = ["build_management_app"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_CODES = {404: (404000, "NotFound"), 405: (405000, "MethodNotAllowed"), 413: (400006, "RequestTooLarge")}


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
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


def _bind(route: Route, ctx: ApiContext, policies: AccessPolicies, host_names: Sequence[str]) -> _Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        policies.authenticate(
            request.headers.get("Authorization"),
            host_names=host_names,
            path=request.path,
            needed=route.permission,
        )
        return await route.handler(ctx, request)

    handle.__name__ = route.operation_id
    return handle


def build_management_app(
    store: Store,
    service: ProvisioningService,
    policies: AccessPolicies,
    *,
    host_names: Sequence[str],
    max_body: int = 1 << 20,
    on_trust_changed: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """The management API. `host_names`: the names (and addresses) clients reach the service
    by; a token's `sr` must name one of them. `max_body`: the largest request body accepted.
    `on_trust_changed` is awaited after every change of the X.509 trust anchors."""
    if not host_names:
        raise ValueError("host_names must name at least one host")
    ctx = ApiContext(store, service, max_body, on_trust_changed)
    # client_max_size is a backstop above ours: read_json refuses first with a clearer message.
    app = web.Application(middlewares=[_errors], client_max_size=max_body + 1024)
    names = tuple(host_names)
    document: dict[str, Any] = openapi_document()
    openapi_text = json.dumps(document)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(text=openapi_text, content_type="application/json")

    app.router.add_get("/openapi.json", openapi, allow_head=False)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _bind(route, ctx, policies, names))
    return app
