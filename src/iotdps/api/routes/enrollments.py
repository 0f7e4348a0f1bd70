"""Routes of the DPS data plane: individual enrollments, enrollment groups and registration
states (handlers in api.enrollments)."""

from __future__ import annotations

from iotdps.access import Permission
from iotdps.api import enrollments as enr
from iotdps.api.routes.route import Handler, Route
from iotdps.api.schemas import ref

__all__ = ["ENROLLMENT_ROUTES"]

_ENR = enr.handlers(enr.ENROLLMENTS)
_GRP = enr.handlers(enr.GROUPS)
_ER, _EW = Permission.ENROLLMENT_READ, Permission.ENROLLMENT_WRITE
_RR, _RW = Permission.REGISTRATION_READ, Permission.REGISTRATION_WRITE


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


ENROLLMENT_ROUTES: tuple[Route, ...] = (
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
)
