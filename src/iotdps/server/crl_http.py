"""The CRL distribution point: `GET /crl/<CA name>.crl` over plain HTTP, the DER CRL the service
holds for that uploaded CA (`application/pkix-crl`, RFC 5280 4.2.1.13 and RFC 2585).

Plain HTTP on purpose: a CRL is signed by its CA, so the transport adds nothing to trust, and a
client that fetched it over HTTPS might need a CRL to check the server first. Nothing else is
served here and nothing is written: the CRLs come in through the management API or the CLI.
"""

from __future__ import annotations

import re

from aiohttp import web

from iotdps.pki.revocation import crl_der, load_crl
from iotdps.ports import Store

__all__ = ["build_crl_app"]

# The CA names the management API accepts, minus what cannot be in a path segment.
_NAME = re.compile(r"^[^/\\?#]{1,128}\Z")


def build_crl_app(store: Store) -> web.Application:
    async def crl(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not _NAME.match(name):
            raise web.HTTPNotFound()
        async with store.read() as uow:
            ca = await uow.cas.get(name)
        if ca is None or not ca.crl:
            raise web.HTTPNotFound(text=f"no CRL is held for CA {name}\n")
        body = crl_der(load_crl(ca.crl))
        return web.Response(body=body, content_type="application/pkix-crl", headers={"Cache-Control": "max-age=300"})

    app = web.Application()
    app.router.add_get("/crl/{name}.crl", crl)
    return app
