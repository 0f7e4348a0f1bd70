"""Handlers of the DPS service API data plane: enrollments, groups, registration states.

Shapes and verbs are azure-wire-protocol.md section 4. Choices where the spec is silent:
- PUT without If-Match creates or replaces (real DPS upserts); with If-Match it needs the
  record to exist with that etag (412 otherwise). Etags are accepted quoted or not.
- GET and PUT answers never carry symmetric keys; only `attestationmechanism` returns them.
  So a client that read a record and writes it back (keys empty) keeps the stored keys
  instead of getting new ones generated.
- A bulk operation runs each item in its own transaction and reports the failed ones.
- Only `SELECT *` queries are understood; anything else is refused with 400 rather than
  silently answered with everything.
- A custom-allocation webhook URL must pass the destination rules (allocation.destinations)
  when it is written: a 400 names the rule.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from iotdps.allocation.destinations import check_webhook_url
from iotdps.api._http import (
    ApiContext,
    if_match,
    json_object,
    json_response,
    page_request,
    paged_response,
    read_json,
)
from iotdps.api.errors import error_code
from iotdps.enrollment.models import Attestation, EnrollmentGroup, IndividualEnrollment, SymmetricKeyAttestation
from iotdps.errors import AlreadyExists, InvalidInput, IotdpsError, NotFound
from iotdps.ids import check_registration_id
from iotdps.ports import Page, UnitOfWork
from iotdps.provisioning import admin
from iotdps.provisioning.record_view import registration_view, registration_views

__all__ = [
    "BULK_MAX",
    "BULK_MODES",
    "ENROLLMENTS",
    "GROUPS",
    "Kind",
    "delete_registration",
    "get_registration",
    "handlers",
    "query_registrations",
]

BULK_MAX = 10
BULK_MODES = ("create", "update", "updateIfMatchETag", "delete")
_SELECT_ALL = re.compile(r"^\s*select\s+\*(\s+from\s+\w+)?\s*$", re.IGNORECASE)

Record = Any  # IndividualEnrollment | EnrollmentGroup; the two kinds share one code path


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between individual enrollments and enrollment groups."""

    noun: str
    id_field: str
    bulk_field: str
    item_type: str
    parse: Callable[[object], Record]
    # The core's writers (provisioning.admin), which log each change with its actor.
    put: Callable[..., Awaitable[Record]]
    delete: Callable[..., Awaitable[Record]]
    repo: Callable[[UnitOfWork], Any]
    affects_trust: Callable[[Record], bool]

    def key(self, record: Record) -> str:
        return str(getattr(record, "registration_id", None) or record.enrollment_group_id)

    def check_id(self, value: str) -> str:
        try:
            return check_registration_id(value)
        except InvalidInput as exc:
            if self.id_field == "registrationId":
                raise
            raise InvalidInput(exc.message.replace("registration id", "enrollment group id")) from None


def _parse_enrollment(doc: object) -> IndividualEnrollment:
    return IndividualEnrollment.from_json(doc, "enrollment")


def _parse_group(doc: object) -> EnrollmentGroup:
    return EnrollmentGroup.from_json(doc, "enrollmentGroup")


ENROLLMENTS = Kind(
    noun="enrollment",
    id_field="registrationId",
    bulk_field="enrollments",
    item_type="enrollment",
    parse=_parse_enrollment,
    put=admin.put_enrollment,
    delete=admin.delete_enrollment,
    repo=lambda uow: uow.enrollments,
    # Individual X.509 certificates are TLS anchors themselves.
    affects_trust=lambda r: r is not None and r.attestation.type == "x509",
)
GROUPS = Kind(
    noun="enrollment group",
    id_field="enrollmentGroupId",
    bulk_field="enrollmentGroups",
    item_type="enrollmentGroup",
    parse=_parse_group,
    put=admin.put_group,
    delete=admin.delete_group,
    repo=lambda uow: uow.groups,
    affects_trust=lambda r: r is not None,
)


def _keep_stored_keys(doc: Mapping[str, Any], parsed: Attestation, stored: Attestation | None) -> Attestation:
    """Keys the client left out stay as stored (GET never returned them to it)."""
    if parsed.symmetric_key is None or stored is None or stored.symmetric_key is None:
        return parsed
    given = doc.get("attestation", {}).get("symmetricKey") or {}
    primary = parsed.symmetric_key.primary_key if given.get("primaryKey") else stored.symmetric_key.primary_key
    secondary = parsed.symmetric_key.secondary_key if given.get("secondaryKey") else stored.symmetric_key.secondary_key
    return replace(parsed, symmetric_key=SymmetricKeyAttestation(primary, secondary))


async def _get(ctx: ApiContext, kind: Kind, key: str) -> Record | None:
    async with ctx.store.begin() as uow:
        return await kind.repo(uow).get(key)


async def _write(ctx: ApiContext, kind: Kind, key: str, doc: Mapping[str, Any], etag: str | None) -> Record:
    """Parse, keep stored keys, write through the core's admin helpers; returns the stored record."""
    body = dict(doc)
    given = body.get(kind.id_field)
    if given is None:
        body[kind.id_field] = key
    elif not isinstance(given, str) or given.lower() != key.lower():  # ids are case-insensitive
        raise InvalidInput(f"{kind.id_field} {given!r} in the body differs from {key!r} in the URL")
    record = kind.parse(body)
    hook = record.settings.custom_allocation_definition
    if hook is not None:
        # Anyone with EnrollmentWrite names this URL and the server will POST to it: refuse
        # what would reach loopback or the internal network (allocation.destinations).
        refusal = await check_webhook_url(ctx.webhook_destinations, hook.webhook_url)
        if refusal is not None:
            raise InvalidInput(f"customAllocationDefinition.webhookUrl: {refusal}")
    stored = await _get(ctx, kind, key)
    record = replace(
        record, attestation=_keep_stored_keys(body, record.attestation, stored.attestation if stored else None)
    )
    saved = await kind.put(ctx.store, record, etag, actor=ctx.acting)
    if kind.affects_trust(stored) or kind.affects_trust(saved):
        await ctx.trust_changed()
    return saved


async def _delete(ctx: ApiContext, kind: Kind, key: str, etag: str | None) -> None:
    stored = await kind.delete(ctx.store, key, etag, actor=ctx.acting)
    if kind.affects_trust(stored):
        await ctx.trust_changed()


async def _state(uow: UnitOfWork, kind: Kind, key: str) -> Any:
    """The registration record of an individual enrollment's device, if it has registered."""
    return await uow.registrations.get(key) if kind is ENROLLMENTS else None


def _with_state(record: Record, state: Any) -> dict[str, Any]:
    """As the DPS service API answers: an individual enrollment carries the registration state
    of its device once the device has registered (read-only; ignored when sent back)."""
    doc: dict[str, Any] = record.to_json()
    if state is not None:
        doc["registrationState"] = state.to_json()
    return doc


# --------------------------------------------------------------------------- handlers


def handlers(kind: Kind) -> dict[str, Callable[[ApiContext, web.Request], Awaitable[web.StreamResponse]]]:
    async def get(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        key = kind.check_id(request.match_info["id"])
        async with ctx.store.begin() as uow:
            found = await kind.repo(uow).get(key)
            state = await _state(uow, kind, key) if found is not None else None
        if found is None:
            raise NotFound(f"{kind.noun} {key} not found")
        return json_response(_with_state(found, state), etag=found.etag)

    async def put(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        key = kind.check_id(request.match_info["id"])
        doc = json_object(await read_json(request, ctx), f"the {kind.noun}")
        saved = await _write(ctx, kind, key, doc, if_match(request))
        async with ctx.store.begin() as uow:
            state = await _state(uow, kind, key)
        return json_response(_with_state(saved, state), etag=saved.etag)

    async def delete(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        key = kind.check_id(request.match_info["id"])
        await _delete(ctx, kind, key, if_match(request))
        return web.Response(status=204)

    async def attestation(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        key = kind.check_id(request.match_info["id"])
        found = await _get(ctx, kind, key)
        if found is None:
            raise NotFound(f"{kind.noun} {key} not found")
        return json_response(found.attestation.to_json(include_keys=True))

    async def query(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        spec = await read_json(request, ctx, required=False)
        _check_query(spec)
        size, token = page_request(request)
        async with ctx.store.begin() as uow:
            page: Page[Any] = await kind.repo(uow).list(page_size=size, continuation=token)
        return paged_response([r.to_json() for r in page.items], page.continuation, size, kind.item_type)

    async def bulk(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
        doc = json_object(await read_json(request, ctx), "the bulk operation")
        mode = doc.get("mode")
        if mode not in BULK_MODES:
            raise InvalidInput(f"mode must be one of {', '.join(BULK_MODES)}")
        items = doc.get(kind.bulk_field)
        if not isinstance(items, list) or not items:
            raise InvalidInput(f"{kind.bulk_field} must be a non-empty list")
        if len(items) > BULK_MAX:
            raise InvalidInput(f"a bulk operation takes at most {BULK_MAX} items, not {len(items)}")
        errors = [e for e in [await _bulk_item(ctx, kind, str(mode), item) for item in items] if e is not None]
        return json_response({"isSuccessful": not errors, "errors": errors})

    return {"get": get, "put": put, "delete": delete, "attestation": attestation, "query": query, "bulk": bulk}


def _check_query(spec: Any) -> None:
    if spec is None:
        return
    if not isinstance(spec, Mapping):
        raise InvalidInput("the query specification must be a JSON object")
    text = spec.get("query")
    if text is None:
        return
    if not isinstance(text, str):
        raise InvalidInput("query must be a string")
    if not _SELECT_ALL.match(text):
        raise InvalidInput("only the query SELECT * is supported")


async def _bulk_item(ctx: ApiContext, kind: Kind, mode: str, item: object) -> dict[str, Any] | None:
    key = item.get(kind.id_field) if isinstance(item, Mapping) else None
    try:
        if not isinstance(item, Mapping):
            raise InvalidInput(f"each of {kind.bulk_field} must be a JSON object")
        if not isinstance(key, str):
            raise InvalidInput(f"{kind.id_field} is required")
        key = kind.check_id(key)
        etag = item.get("etag") if isinstance(item.get("etag"), str) else None
        if mode == "delete":
            await _delete(ctx, kind, key, etag)
        elif mode == "create":
            if await _get(ctx, kind, key) is not None:
                raise AlreadyExists(f"{kind.noun} {key} already exists")
            await _write(ctx, kind, key, item, None)
        elif mode == "update":
            await _write(ctx, kind, key, item, None)
        else:  # updateIfMatchETag
            await _write(ctx, kind, key, item, etag or "*")
    except IotdpsError as exc:
        return {
            kind.id_field: key if isinstance(key, str) else "",
            "errorCode": error_code(exc),
            "errorStatus": exc.message,
        }
    return None


# --------------------------------------------------------------------------- registration states


async def get_registration(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    key = check_registration_id(request.match_info["id"])
    async with ctx.store.begin() as uow:
        record = await uow.registrations.get(key)
        view = await registration_view(uow, record) if record is not None else None
    if view is None:
        raise NotFound(f"registration {key} not found")
    return json_response(view.to_json(), etag=view.record.etag)


async def delete_registration(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    key = check_registration_id(request.match_info["id"])
    await admin.delete_registration(ctx.store, key, if_match(request), actor=ctx.acting)
    return web.Response(status=204)


async def query_registrations(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    """Registration states of the devices of one enrollment group (the path names the group),
    or of every device (`/registrations/query`, an iotdps addition for operators)."""
    group = GROUPS.check_id(request.match_info["id"]) if "id" in request.match_info else None
    await read_json(request, ctx, required=False)  # the SDKs send no body; a body is ignored
    size, token = page_request(request)
    async with ctx.store.begin() as uow:
        page = await uow.registrations.list(size, token, enrollment_group_id=group)
        views = await registration_views(uow, page.items)
    return paged_response([v.to_json() for v in views], page.continuation, size, "deviceRegistration")
