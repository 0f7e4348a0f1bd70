"""The management API's one error table: iotdps errors -> HTTP status, errorCode and body.

Body (azure-wire-protocol.md 4.6): `{"errorCode": int, "trackingId": str, "message": str,
"timestampUtc": str}` plus the header `x-ms-error-code` (the error's name, as Azure services
send it). The message is the error's safe message; anything unexpected is a 500 with a
generic message and the details in the log under the same tracking id.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from aiohttp import web

from iotdps.errors import (
    AlreadyExists,
    ConfigError,
    Forbidden,
    InvalidInput,
    IotdpsError,
    NotFound,
    PreconditionFailed,
    StoreError,
    Throttled,
    Unauthorized,
)
from iotdps.timestamps import format_time, utcnow

__all__ = ["ApiError", "error_code", "error_response", "response_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Code:
    status: int
    code: int
    name: str


# Order matters: the first class an error is an instance of wins.
_TABLE: tuple[tuple[type[IotdpsError], _Code], ...] = (
    (Unauthorized, _Code(401, 401002, "Unauthorized")),
    (Forbidden, _Code(403, 403001, "Forbidden")),
    (NotFound, _Code(404, 404201, "NotFound")),
    (AlreadyExists, _Code(409, 409201, "Conflict")),
    (PreconditionFailed, _Code(412, 412002, "PreconditionFailed")),
    (Throttled, _Code(429, 429001, "ThrottlingException")),
    (InvalidInput, _Code(400, 400004, "ArgumentInvalid")),
    (ConfigError, _Code(400, 400005, "ConfigurationInvalid")),
    (StoreError, _Code(503, 503001, "ServiceUnavailable")),
    (IotdpsError, _Code(400, 400000, "BadRequest")),  # PkiError and other refusals of the input
)
_INTERNAL = _Code(500, 500001, "InternalServerError")


class ApiError(IotdpsError):
    """An error raised by the API edge itself with an explicit status (e.g. 405, 415)."""

    def __init__(self, status: int, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.name = status, code, name


def _entry(exc: BaseException) -> _Code:
    if isinstance(exc, ApiError):
        return _Code(exc.status, exc.code, exc.name)
    if isinstance(exc, IotdpsError):
        for cls, entry in _TABLE:
            if isinstance(exc, cls):
                return entry
    return _INTERNAL


def error_code(exc: BaseException) -> int:
    """The six-digit errorCode of `exc` (bulk operation results carry it per item)."""
    return _entry(exc).code


def error_response(status: int, code: int, name: str, message: str, tracking_id: str | None = None) -> web.Response:
    body = {
        "errorCode": code,
        "trackingId": tracking_id or uuid.uuid4().hex,
        "message": message,
        "timestampUtc": format_time(utcnow()),
    }
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={"x-ms-error-code": name},
    )


def response_for(exc: BaseException) -> web.Response:
    """The JSON error answer for `exc` (logged with its tracking id when unexpected)."""
    tracking = uuid.uuid4().hex
    entry = _entry(exc)
    if isinstance(exc, IotdpsError) and entry is not _INTERNAL:
        response = error_response(entry.status, entry.code, entry.name, exc.message, tracking)
        if isinstance(exc, Throttled):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    log.error("management API internal error (trackingId %s)", tracking, exc_info=exc)
    return error_response(
        _INTERNAL.status, _INTERNAL.code, _INTERNAL.name, f"internal error (trackingId {tracking})", tracking
    )
