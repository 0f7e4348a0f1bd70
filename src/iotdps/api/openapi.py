"""The OpenAPI 3.1 document of the management API (`GET /openapi.json`), generated from the
route table (api.routes) and the body schemas (api.schemas), so it says what the server does.
"""

from __future__ import annotations

from typing import Any

from iotdps.access import CSRF_HEADER, SESSION_COOKIE
from iotdps.api.hub_service import HUB_API_VERSION
from iotdps.api.routes import API_VERSIONS, HUB_HEADER, ROUTES, Route
from iotdps.api.schemas import COMPONENTS, REGISTRATION_ID, ref

__all__ = ["openapi_document"]

_REASONS = {
    400: "Invalid input: the message says what is wrong; nothing was stored",
    401: "Missing or invalid SharedAccessSignature, or the policy lacks the permission",
    403: "A change through a console session without the session's CSRF token",
    404: "Not found (for hub routes also: the Host names no hub served here, or the device is not online)",
    409: "The device already exists",
    412: "If-Match does not match the stored etag",
    429: "The device's cloud-to-device queue is full, or too many telemetry streams are open",
    504: "The device did not answer the direct method in time",
}


def _path_schema(path: str, name: str) -> dict[str, Any]:
    if path.startswith("/trustBundles"):  # pki.trust_bundle.check_bundle_id
        return {"type": "string", "pattern": "^[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,126}[A-Za-z0-9])?$"}
    if path.startswith("/certificateAuthorities"):  # pki.cadir.check_ca_name
        return {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
    if name == "id" and path.startswith(("/devices", "/twins")):
        # What the router documents; the server accepts IoT Hub's whole device id alphabet.
        return {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}
    if name == "id":
        return REGISTRATION_ID
    if path.startswith("/linkedHubs"):
        return {"type": "string", "pattern": "^[A-Za-z0-9.:-]{1,253}$"}
    return {"type": "string", "pattern": "^[^/\\\\?#]{1,128}$"}


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": "api-version",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": f"accepted and ignored; the SDKs send {', '.join(API_VERSIONS)}"
            + (f" (azure-iot-hub: {HUB_API_VERSION})" if route.scope == "hub" else ""),
        },
    ]
    for name in ("id", "name"):
        if "{" + name + "}" in route.path:
            params.append({"name": name, "in": "path", "required": True, "schema": _path_schema(route.path, name)})
    if route.scope == "hub":
        params.append(
            {
                "name": HUB_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the hub, when the Host cannot name it (a browser): its host name",
            }
        )
    if route.if_match:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "etag, quoted or not; * matches any existing record",
            }
        )
    if route.paged:
        params.append(
            {
                "name": "x-ms-max-item-count",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "page size (at most 1000)",
            }
        )
        params.append(
            {
                "name": "x-ms-continuation",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the previous page's continuation token",
            }
        )
    for name, schema, description in route.query:
        params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": description})

    success: dict[str, Any] = {"description": route.summary}
    if route.answer is not None:
        success["content"] = {route.content_type: {"schema": route.answer}}
    headers: dict[str, Any] = {}
    if route.paged:
        headers["x-ms-continuation"] = {"schema": {"type": "string"}, "description": "absent on the last page"}
        headers["x-ms-max-item-count"] = {"schema": {"type": "integer"}}
        headers["x-ms-item-type"] = {"schema": {"type": "string"}}
    if route.etag_header:
        headers["ETag"] = {"schema": {"type": "string"}}
    if headers:
        success["headers"] = headers
    responses: dict[str, Any] = {str(route.status): success}
    errors = route.errors if route.method == "GET" else tuple(sorted({*route.errors, 403}))
    for status in errors:
        responses[str(status)] = {
            "description": _REASONS[status],
            "headers": {"x-ms-error-code": {"schema": {"type": "string"}, "required": True}},
            "content": {"application/json": {"schema": ref("ProvisioningServiceErrorDetails")}},
        }
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": params,
        "responses": responses,
        "security": [{"sas": []}, {"session": []}],
    }
    if route.permission is not None:
        op["x-permission"] = route.permission.value
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": ref(route.body)}},
        }
    return op


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "iotdps management API",
            "version": "2021-10-01",
            "description": "The Azure DPS service API (enrollments, groups, registration states) plus the "
            "service configuration (CA certificates, linked hubs, settings), and the IoT hub service API "
            "subset (devices, twins, direct methods; cloud-to-device messages and telemetry are iotdps "
            "additions). Authorization: `SharedAccessSignature sr=<host>&sig=..&se=..&skn=<policy>`; "
            "for hub routes the Host (or x-iotdps-hub) and `sr` name the hub. The console calls the same "
            "routes with its session cookie.",
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "sas": {"type": "apiKey", "in": "header", "name": "Authorization"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": f"the console's session (POST /console/session); changes also need {CSRF_HEADER}",
                },
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
