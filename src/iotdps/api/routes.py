"""The one route table of the management API.

Both the aiohttp router and the OpenAPI document (`/openapi.json`) are built from `ROUTES`, so
they cannot drift: a route's method, path, permission, body schema, answers and headers are
written once, here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from iotdps.access import CSRF_HEADER, SESSION_COOKIE, Permission
from iotdps.api import enrollments as enr
from iotdps.api import hub_service as hubs
from iotdps.api import service_config as cfg
from iotdps.api import statistics as stats
from iotdps.api._http import ApiContext
from iotdps.api.schemas import COMPONENTS, REGISTRATION_ID, ref

__all__ = ["API_VERSIONS", "HUB_HEADER", "ROUTES", "Handler", "Route", "openapi_document"]

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


_ENR = enr.handlers(enr.ENROLLMENTS)
_GRP = enr.handlers(enr.GROUPS)
_ER, _EW = Permission.ENROLLMENT_READ, Permission.ENROLLMENT_WRITE
_RR, _RW = Permission.REGISTRATION_READ, Permission.REGISTRATION_WRITE
_SC = Permission.SERVICE_CONFIG
_GR, _GW, _SV = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, Permission.SERVICE_CONNECT


def _enrollment_routes(base: str, h: dict[str, Handler], schema: str, bulk: str, op: str, tag: str) -> list[Route]:
    item = f"{base}/{{id}}"
    return [
        Route(
            "GET",
            item,
            h["get"],
            _ER,
            f"{op}_Get",
            f"Get a {tag} (without keys)",
            tag,
            answer=ref(schema),
            etag_header=True,
            errors=(400, 401, 404),
        ),
        Route(
            "PUT",
            item,
            h["put"],
            _EW,
            f"{op}_CreateOrUpdate",
            f"Create or replace a {tag}",
            tag,
            body=schema,
            answer=ref(schema),
            if_match=True,
            etag_header=True,
            errors=(400, 401, 412),
        ),
        Route(
            "DELETE",
            item,
            h["delete"],
            _EW,
            f"{op}_Delete",
            f"Delete a {tag}",
            tag,
            status=204,
            if_match=True,
            errors=(400, 401, 404, 412),
        ),
        # The attestation with its keys needs write rights: a group's master key lets its holder
        # register any id, so the read-only policy must not read it (least privilege).
        Route(
            "POST",
            f"{item}/attestationmechanism",
            h["attestation"],
            _EW,
            f"{op}_GetAttestationMechanism",
            f"The attestation of a {tag}, with its keys",
            tag,
            answer=ref("AttestationMechanism"),
            errors=(400, 401, 404),
        ),
        Route(
            "POST",
            f"{base}/query",
            h["query"],
            _ER,
            f"{op}_Query",
            f"Query {tag}s (SELECT * only)",
            tag,
            body="QuerySpecification",
            body_required=False,
            paged=True,
            answer={"type": "array", "items": ref(schema)},
        ),
        Route(
            "POST",
            base,
            h["bulk"],
            _EW,
            f"{op}_RunBulkOperation",
            f"Bulk create, update or delete of {tag}s",
            tag,
            body=bulk,
            answer=ref("BulkEnrollmentOperationResult"),
        ),
    ]


_CA = "/certificates/{name}"
_HUB = "/linkedHubs/{name}"

_DPS_ROUTES: tuple[Route, ...] = (
    *_enrollment_routes(
        "/enrollments", _ENR, "IndividualEnrollment", "BulkEnrollmentOperation", "IndividualEnrollment", "enrollment"
    ),
    *_enrollment_routes(
        "/enrollmentGroups",
        _GRP,
        "EnrollmentGroup",
        "BulkEnrollmentGroupOperation",
        "EnrollmentGroup",
        "enrollment group",
    ),
    Route(
        "POST",
        "/registrations/query",
        enr.query_registrations,
        _RR,
        "DeviceRegistrationState_QueryAll",
        "Registration states of every device (an iotdps addition)",
        "registration",
        paged=True,
        answer={"type": "array", "items": ref("DeviceRegistrationState")},
    ),
    Route(
        "GET",
        "/registrations/{id}",
        enr.get_registration,
        _RR,
        "DeviceRegistrationState_Get",
        "Get a device registration state",
        "registration",
        answer=ref("DeviceRegistrationState"),
        etag_header=True,
        errors=(400, 401, 404),
    ),
    Route(
        "DELETE",
        "/registrations/{id}",
        enr.delete_registration,
        _RW,
        "DeviceRegistrationState_Delete",
        "Delete a registration state (the device's next registration is an initial assignment)",
        "registration",
        status=204,
        if_match=True,
        errors=(400, 401, 404, 412),
    ),
    Route(
        "POST",
        "/registrations/{id}/query",
        enr.query_registrations,
        _RR,
        "DeviceRegistrationState_Query",
        "Registration states of the devices of enrollment group {id}",
        "registration",
        paged=True,
        answer={"type": "array", "items": ref("DeviceRegistrationState")},
    ),
    Route(
        "GET",
        "/certificates",
        cfg.list_cas,
        _SC,
        "Certificates_List",
        "Uploaded CA certificates",
        "ca",
        answer=ref("CertificateList"),
    ),
    Route(
        "GET",
        _CA,
        cfg.get_ca,
        _SC,
        "Certificates_Get",
        "One uploaded CA certificate",
        "ca",
        answer=ref("CertificateDescription"),
        etag_header=True,
        errors=(400, 401, 404),
    ),
    Route(
        "PUT",
        _CA,
        cfg.put_ca,
        _SC,
        "Certificates_CreateOrUpdate",
        "Upload a CA certificate (isVerified true: trusted without proof of possession)",
        "ca",
        body="CertificateUpload",
        answer=ref("CertificateDescription"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 412),
    ),
    Route(
        "DELETE",
        _CA,
        cfg.delete_ca,
        _SC,
        "Certificates_Delete",
        "Delete an uploaded CA certificate",
        "ca",
        status=204,
        if_match=True,
        errors=(400, 401, 404, 412),
    ),
    Route(
        "POST",
        f"{_CA}/generateVerificationCode",
        cfg.generate_verification_code,
        _SC,
        "Certificates_GenerateVerificationCode",
        "A fresh single-use proof-of-possession code",
        "ca",
        answer=ref("CertificateDescription"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 404, 412),
    ),
    Route(
        "POST",
        f"{_CA}/verify",
        cfg.verify_ca,
        _SC,
        "Certificates_VerifyCertificate",
        "Proof of possession: a certificate with CN = the code, signed by the CA",
        "ca",
        body="VerificationCertificate",
        answer=ref("CertificateDescription"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 404, 412),
    ),
    Route(
        "GET",
        "/linkedHubs",
        cfg.list_hubs,
        _SC,
        "LinkedHubs_List",
        "Linked IoT hubs",
        "hub",
        answer={"type": "array", "items": ref("LinkedHub")},
    ),
    Route(
        "GET",
        _HUB,
        cfg.get_hub,
        _SC,
        "LinkedHubs_Get",
        "One linked hub",
        "hub",
        answer=ref("LinkedHub"),
        errors=(400, 401, 404),
    ),
    Route(
        "PUT",
        _HUB,
        cfg.put_hub,
        _SC,
        "LinkedHubs_CreateOrUpdate",
        "Link a hub (or replace its settings)",
        "hub",
        body="LinkedHubSettings",
        body_required=False,
        answer=ref("LinkedHub"),
    ),
    Route(
        "PATCH",
        _HUB,
        cfg.patch_hub,
        _SC,
        "LinkedHubs_Update",
        "Change a hub's allocationWeight, applyAllocationPolicy or location",
        "hub",
        body="LinkedHubSettings",
        answer=ref("LinkedHub"),
        errors=(400, 401, 404),
    ),
    Route(
        "DELETE",
        _HUB,
        cfg.delete_hub,
        _SC,
        "LinkedHubs_Delete",
        "Unlink a hub",
        "hub",
        status=204,
        errors=(400, 401, 404),
    ),
    Route(
        "GET",
        "/settings",
        cfg.get_settings,
        _SC,
        "Settings_Get",
        "ID scope and default allocation policy",
        "settings",
        answer=ref("ServiceSettings"),
        errors=(400, 401, 404),
    ),
    Route(
        "PUT",
        "/settings",
        cfg.put_settings,
        _SC,
        "Settings_Set",
        "Set the ID scope and default allocation",
        "settings",
        body="ServiceSettings",
        answer=ref("ServiceSettings"),
    ),
    Route(
        "GET",
        "/refusals",
        cfg.list_refusals,
        _RR,
        "Refusals_List",
        "Recently refused registrations, newest first, with the reason in words",
        "registration",
        answer={"type": "array", "items": ref("Refusal")},
        query=(
            ("registrationId", {"type": "string"}, "only this registration id"),
            ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many"),
        ),
    ),
    Route(
        "POST",
        "/explain",
        cfg.explain,
        _ER,
        "Explain",
        "The precedence walk and decision for a device, without registering it",
        "registration",
        body="ExplainRequest",
        answer=ref("Explanation"),
        errors=(400, 401, 404),
    ),
    Route(
        "GET",
        "/status",
        stats.service_status,
        _RR,
        "Status_Get",
        "ID scope, endpoints, linked hubs, record counts, assignments and refusals per minute (an iotdps addition)",
        "status",
        answer=ref("ServiceStatus"),
    ),
)


_DEV = "/devices/{id}"
_TWIN = "/twins/{id}"
_HUB_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/devices",
        hubs.list_devices,
        _GR,
        "Devices_GetDevices",
        "Device identities of the hub",
        "hub devices",
        answer={"type": "array", "items": ref("Device")},
        query=(("top", {"type": "integer"}, "at most this many (outside 1..1000: 1000)"),),
        errors=(400, 401, 404),
        scope="hub",
    ),
    Route(
        "GET",
        _DEV,
        hubs.get_device,
        _GR,
        "Devices_GetIdentity",
        "A device identity, with its keys",
        "hub devices",
        answer=ref("Device"),
        etag_header=True,
        errors=(400, 401, 404),
        scope="hub",
    ),
    Route(
        "PUT",
        _DEV,
        hubs.put_device,
        _GW,
        "Devices_CreateOrUpdateIdentity",
        "Create a device identity (no If-Match; 409 if it exists) or update one (If-Match)",
        "hub devices",
        body="Device",
        answer=ref("Device"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 404, 409, 412),
        scope="hub",
    ),
    Route(
        "DELETE",
        _DEV,
        hubs.delete_device,
        _GW,
        "Devices_DeleteIdentity",
        "Delete a device identity (its queued cloud-to-device messages too)",
        "hub devices",
        status=204,
        if_match=True,
        errors=(400, 401, 404, 412),
        scope="hub",
    ),
    Route(
        "GET",
        _TWIN,
        hubs.get_twin,
        _GR,
        "Devices_GetTwin",
        "A device twin",
        "hub twins",
        answer=ref("Twin"),
        etag_header=True,
        errors=(400, 401, 404),
        scope="hub",
    ),
    Route(
        "PATCH",
        _TWIN,
        hubs.patch_twin,
        _SV,
        "Devices_UpdateTwin",
        "Merge tags and desired properties (pushed to the device when connected)",
        "hub twins",
        body="Twin",
        answer=ref("Twin"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 404, 412),
        scope="hub",
    ),
    Route(
        "PUT",
        _TWIN,
        hubs.replace_twin,
        _SV,
        "Devices_ReplaceTwin",
        "Replace tags and desired properties (pushed to the device when connected)",
        "hub twins",
        body="Twin",
        answer=ref("Twin"),
        if_match=True,
        etag_header=True,
        errors=(400, 401, 404, 412),
        scope="hub",
    ),
    Route(
        "POST",
        f"{_TWIN}/methods",
        hubs.invoke_method,
        _SV,
        "Devices_InvokeMethod",
        "Invoke a direct method and wait for the device's answer",
        "hub methods",
        body="CloudToDeviceMethod",
        answer=ref("CloudToDeviceMethodResult"),
        errors=(400, 401, 404, 504),
        scope="hub",
    ),
    Route(
        "POST",
        f"{_DEV}/messages/deviceBound",
        hubs.send_c2d,
        _SV,
        "CloudToDevice_Send",
        "Queue a cloud-to-device message (an iotdps addition: the SDK sends C2D over AMQP)",
        "hub messages",
        body="CloudToDeviceMessage",
        status=202,
        answer=ref("CloudToDeviceAccepted"),
        errors=(400, 401, 404, 429),
        scope="hub",
    ),
    Route(
        "GET",
        f"{_DEV}/messages/events",
        hubs.read_events,
        _SV,
        "Telemetry_Read",
        "Recent telemetry of a device, oldest first (an iotdps addition)",
        "hub messages",
        answer={"type": "array", "items": ref("TelemetryEvent")},
        query=(
            ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 100)"),
            ("after", {"type": "integer", "minimum": 0}, "only messages after this sequenceNumber (else the newest)"),
        ),
        errors=(400, 401, 404),
        scope="hub",
    ),
    Route(
        "GET",
        f"{_DEV}/messages/events/stream",
        hubs.stream_events,
        _SV,
        "Telemetry_Stream",
        "New telemetry of a device as server-sent events (an iotdps addition)",
        "hub messages",
        answer={"type": "string", "description": "`event: telemetry` with `id:` and `data:` a TelemetryEvent"},
        content_type="text/event-stream",
        query=(
            ("after", {"type": "integer", "minimum": 0}, "from this sequenceNumber on (else Last-Event-ID, else now)"),
            ("timeout", {"type": "integer", "minimum": 1, "maximum": 3600}, "close after this many seconds (300)"),
        ),
        errors=(400, 401, 404, 429),
        scope="hub",
    ),
    Route(
        "GET",
        "/statistics/devices",
        stats.device_statistics,
        _GR,
        "Statistics_GetDeviceStatistics",
        "Device identities of the hub: total, enabled, disabled",
        "hub statistics",
        answer=ref("RegistryStatistics"),
        errors=(400, 401, 404),
        scope="hub",
    ),
    Route(
        "GET",
        "/statistics/service",
        stats.service_statistics,
        _SV,
        "Statistics_GetServiceStatistics",
        "Devices of the hub connected now",
        "hub statistics",
        answer=ref("ServiceStatistics"),
        errors=(400, 401, 404),
        scope="hub",
    ),
)

ROUTES: tuple[Route, ...] = (*_DPS_ROUTES, *_HUB_ROUTES)


# --------------------------------------------------------------------------- OpenAPI

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
            + (f" (azure-iot-hub: {hubs.HUB_API_VERSION})" if route.scope == "hub" else ""),
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
