"""Handlers of CRL upload and listing (the model: `pki.revocation`'s docstring).

`PUT /certificates/{name}/crl` takes `{"crl": PEM, or DER as base64}` and answers the CA's
description, whose `properties.crl` says what is held (number, thisUpdate, nextUpdate,
revokedCount). `GET /crls` lists every held CRL with `expired` worked out now, so that a CRL
past its nextUpdate is reported (its entries are still enforced).
"""

from __future__ import annotations

from aiohttp import web

from iotdps.api._http import ApiContext, if_match, json_object, json_response, read_json
from iotdps.errors import InvalidInput
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.timestamps import parse_time

__all__ = ["list_crls", "put_crl"]


def _ca_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name or len(name) > 128 or any(c in name for c in "/\\?#"):
        raise InvalidInput("a CA name is 1..128 characters without / \\ ? #")
    return name


async def put_crl(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    name = _ca_name(request)
    doc = json_object(await read_json(request, ctx), "the CRL upload")
    crl = doc.get("crl")
    if not isinstance(crl, str) or not crl.strip():
        raise InvalidInput("a CRL upload needs crl: a PEM or base64 DER string")
    cas = CaAdminService(ctx.store, ctx.service.clock, actor=ctx.acting)
    saved = await cas.upload_crl(name, crl, if_match(request))
    # The TLS seam and the hub enforce the new set now, not at the next trust poll.
    await ctx.trust_changed()
    return json_response(saved.to_json(), etag=saved.etag)


async def list_crls(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    now = ctx.service.clock.now()
    async with ctx.store.begin() as uow:
        cas = await uow.cas.list()
    out = []
    for ca in cas:
        if ca.crl_info is None:
            continue
        next_update = ca.crl_info.get("nextUpdate")
        expired = isinstance(next_update, str) and parse_time(next_update) < now
        out.append({"name": ca.name, **ca.crl_info, "expired": expired})
    return json_response({"value": out})
