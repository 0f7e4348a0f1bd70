"""The management REST API: the Azure DPS service API shapes plus the service configuration,
and the IoT hub service API subset (api.hub_service; the hub is chosen by the request's Host).

`build_management_app` (api.app) is the aiohttp application `iotdps up` serves on the
management port. Who may call which route is iotdps.access (shared access policies, tokens,
console sessions); api.auth is only its aiohttp guard.

    app.py             the application: error middleware, /openapi.json, every route guarded
    auth.py            the guard: which hub a request addresses, which policy it proves
    routes/            the route table, one module per resource (method, path, permission)
    openapi.py         the OpenAPI document, generated from the route table
    schemas.py         JSON Schemas of the bodies (for the OpenAPI document)
    enrollments.py     handlers: enrollments, groups, registration states
    service_config.py  handlers: CA certificates, linked hubs, settings, refusals, explain
    statistics.py      handlers: /status and the hub's statistics
    hub_service/       handlers of the hub service API: devices, twins, messages, telemetry
    _http.py           request/response helpers and the handlers' context (ApiContext)
    errors.py          the one error table: iotdps errors -> HTTP status and errorCode
"""

from __future__ import annotations

from iotdps.api._http import ServiceAbout
from iotdps.api.app import build_management_app

__all__ = ["ServiceAbout", "build_management_app"]
