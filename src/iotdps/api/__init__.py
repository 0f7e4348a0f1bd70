"""The management REST API: the Azure DPS service API shapes plus the service configuration.

`build_management_app` (api.app) is the aiohttp application `iotdps up` serves on the
management port; `AccessPolicies` (api.auth) holds the shared access policies it checks.
"""

from __future__ import annotations

from iotdps.api.app import build_management_app
from iotdps.api.auth import AccessPolicies, AccessPolicy, Permission, make_service_sas

__all__ = ["AccessPolicies", "AccessPolicy", "Permission", "build_management_app", "make_service_sas"]
