"""Handlers of certificate issuance configuration (issue 18): trust bundles, issuing CA objects
(`/certificateAuthorities`), and the record of issued certificates.

Trust bundles take the body `{"certificates": [{"certificate": PEM or base64 DER}]}`; every
PUT of an existing bundle makes its next version (If-Match guards lost updates). Issuing CA
bodies are described in issuance.issuers; their secrets are write-only.
"""

from __future__ import annotations

from aiohttp import web

from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
from iotdps.api.errors import ApiError
from iotdps.errors import InvalidInput, NotFound
from iotdps.ids import check_registration_id
from iotdps.issuance import admin
from iotdps.pki.cadir import check_ca_name
from iotdps.pki.trust_bundle import certificates_from_json, check_bundle_id

__all__ = [
    "delete_issuing_ca",
    "delete_trust_bundle",
    "get_issuing_ca",
    "get_trust_bundle",
    "list_issued_certificates",
    "list_issuing_cas",
    "list_trust_bundles",
    "put_issuing_ca",
    "put_trust_bundle",
]

_MAX_LIST = 1000


# --------------------------------------------------------------------------- trust bundles


async def list_trust_bundles(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.read() as uow:
        found = await uow.trust_bundles.list()
    return json_response([b.to_json() for b in found])


async def get_trust_bundle(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    bundle_id = check_bundle_id(request.match_info["id"])
    async with ctx.store.read() as uow:
        bundle = await uow.trust_bundles.get(bundle_id)
    if bundle is None:
        raise NotFound(f"trust bundle {bundle_id} not found")
    return json_response(bundle.to_json(), etag=bundle.etag)


async def put_trust_bundle(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    bundle_id = check_bundle_id(request.match_info["id"])
    doc = json_object(await read_json(request, ctx), "the trust bundle")
    named = doc.get("id")
    if named is not None and (not isinstance(named, str) or named.lower() != bundle_id.lower()):
        raise InvalidInput(f"the body names trust bundle {named!r} but the path names {bundle_id!r}")
    certificates = certificates_from_json(doc)
    saved = await admin.put_trust_bundle(ctx.store, bundle_id, certificates, if_match(request), actor=ctx.acting)
    return json_response(saved.to_json(), etag=saved.etag)


async def delete_trust_bundle(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    bundle_id = check_bundle_id(request.match_info["id"])
    await admin.delete_trust_bundle(ctx.store, bundle_id, if_match(request), actor=ctx.acting)
    return web.Response(status=204)


# --------------------------------------------------------------------------- issuing CAs


async def list_issuing_cas(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    async with ctx.store.read() as uow:
        found = await uow.issuing_cas.list()
    return json_response([ca.to_json() for ca in found])


async def get_issuing_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = check_ca_name(request.match_info["name"])
    async with ctx.store.read() as uow:
        ca = await uow.issuing_cas.get(name)
    if ca is None:
        raise NotFound(f"issuing CA {name} not found")
    return json_response(ca.to_json(), etag=ca.etag)


async def put_issuing_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = check_ca_name(request.match_info["name"])
    doc = json_object(await read_json(request, ctx), "the issuing CA")
    if ctx.sealing is None:
        raise ApiError(
            503, 503002, "ServiceUnavailable", "this server has no sealing key: it cannot keep an issuing CA's secret"
        )
    saved = await admin.put_issuing_ca(ctx.store, ctx.sealing, name, doc, if_match(request), actor=ctx.acting)
    return json_response(saved.to_json(), etag=saved.etag)


async def delete_issuing_ca(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = check_ca_name(request.match_info["name"])
    await admin.delete_issuing_ca(ctx.store, name, if_match(request), actor=ctx.acting)
    return web.Response(status=204)


# --------------------------------------------------------------------------- issued certificates


async def list_issued_certificates(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    registration_id = request.query.get("registrationId")
    if registration_id is not None:
        check_registration_id(registration_id)
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput("limit must be a number") from None
    if not 1 <= limit <= _MAX_LIST:
        raise InvalidInput(f"limit must be between 1 and {_MAX_LIST}")
    async with ctx.store.read() as uow:
        found = await uow.issued_certificates.list(registration_id, limit)
    return json_response([c.to_json() for c in found])
