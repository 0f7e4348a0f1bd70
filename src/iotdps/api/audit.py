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

__all__ = ["MAX_PAGE", "audit_query", "list_audit"]

MAX_PAGE = 1000


def _number(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18:
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
