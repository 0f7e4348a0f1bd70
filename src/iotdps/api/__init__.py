"""The management REST API: the Azure DPS service API shapes plus the service configuration,
and the IoT hub service API subset (api.hub_service; the hub is chosen by the request's Host).

`build_management_app` (api.app) is the aiohttp application `iotdps up` serves on the
management port; `AccessPolicies` (api.auth) holds the shared access policies it checks.
"""

from __future__ import annotations

from iotdps.api.app import build_management_app
from iotdps.api.auth import AccessPolicies, AccessPolicy, Permission, make_service_sas
from iotdps.api.hub_service import HubOperations

__all__ = [
    "AccessPolicies",
    "AccessPolicy",
    "HubOperations",
    "Permission",
    "build_management_app",
    "make_service_sas",
]
