"""Reading the audit trail over the management API: GET /audit (ServiceConfig).

Filters are the query parameters `action` (a whole action or a dotted prefix), `actor`
(`policy:NAME`, `console:NAME`, `local:USER`, `system:...`), `target` (`enrollment/ID`, ...),
`since` (ISO-8601), `after` (a seq: the page after it) and `limit` (1..1000). Entries come in
ascending seq with their hashes, so a client can verify the chain itself (`iotdps audit verify
--server`).
"""

from __future__ import annotations

from aiohttp import web

from iotdps.api._http import ApiContext, json_response
from iotdps.audit import AuditQuery
from iotdps.errors import InvalidInput
from iotdps.timestamps import parse_time

__all__ = ["ACTION_FILTER", "MAX_PAGE", "MAX_SEQ", "SINCE", "TEXT_FILTER", "audit_query", "list_audit"]

MAX_PAGE = 1000
MAX_SEQ = 10**18 - 1

# What the OpenAPI document promises is accepted (the handler checks the same, with words).
ACTION_FILTER = {
    "type": "string",
    "maxLength": 64,
    "pattern": r"^[a-z][a-z0-9]*(-[a-z0-9]+)*(\.[a-z][a-z0-9]*(-[a-z0-9]+)*)*$",
}
TEXT_FILTER = {"type": "string", "maxLength": 200, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}
# A UTC time the handler always reads; it reads any ISO-8601 time (with an offset, without
# seconds...), but a schema cannot say "a date that exists", so the documented form keeps to
# days 1..28.
SINCE = {
    "type": "string",
    "pattern": r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$",
}


def _number(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_SEQ)):
        raise InvalidInput(f"{name} must be a whole number")
    return int(text)


def audit_query(params: dict[str, str]) -> AuditQuery:
    unknown = set(params) - {"action", "actor", "target", "since", "after", "limit", "api-version"}
    if unknown:
        raise InvalidInput(f"unknown query parameter {sorted(unknown)[0]!r}")
    limit = _number(params.get("limit", "100"), "limit")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1..{MAX_PAGE}")
    since = parse_time(params["since"]) if params.get("since") else None
    after = _number(params["after"], "after") if params.get("after") else None
    return AuditQuery(
        action=params.get("action") or None,
        actor=params.get("actor") or None,
        target=params.get("target") or None,
        since=since,
        after=after,
        limit=limit,
    )


async def list_audit(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    query = audit_query(dict(request.query))
    async with ctx.store.read() as uow:
        found = await uow.audit.list(query)
    return json_response([e.to_json() for e in found])
