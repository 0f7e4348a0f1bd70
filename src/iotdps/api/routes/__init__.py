"""The one route table of the management API.

Both the aiohttp router (api.app) and the OpenAPI document (api.openapi, `/openapi.json`) are
built from `ROUTES`, so they cannot drift: a route's method, path, permission, body schema,
answers and headers are written once, in the table of its resource:

    enrollments.py     individual enrollments, enrollment groups, registration states
    service_config.py  CA certificates, linked hubs, settings, refusals, explain, status
    issuance.py        trust bundles, issuing CAs, issued certificates (issue 18)
    hub_service.py     the hub service API: devices, twins, methods, messages, statistics
"""

from __future__ import annotations

from iotdps.api.routes.enrollments import ENROLLMENT_ROUTES
from iotdps.api.routes.hub_service import HUB_SERVICE_ROUTES
from iotdps.api.routes.issuance import ISSUANCE_ROUTES
from iotdps.api.routes.route import API_VERSIONS, HUB_HEADER, Handler, Route
from iotdps.api.routes.service_config import SERVICE_CONFIG_ROUTES

__all__ = ["API_VERSIONS", "HUB_HEADER", "ROUTES", "Handler", "Route"]

# The DPS routes first, then the hub's: the order the OpenAPI document lists them in.
ROUTES: tuple[Route, ...] = (*ENROLLMENT_ROUTES, *SERVICE_CONFIG_ROUTES, *ISSUANCE_ROUTES, *HUB_SERVICE_ROUTES)
