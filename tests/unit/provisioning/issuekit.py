"""Issuing CAs for the pipeline tests: real ones (a local CA through the real IssuerCache and
sealing, a CFSSL issuer aimed at a closed port or at a loopback server answering nonsense)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from helpers import Env, sk_group

from iotdps.audit import Actor
from iotdps.issuance.admin import put_issuing_ca, put_trust_bundle
from iotdps.issuance.issuers import IssuerCache
from iotdps.issuance.sealing import SealingKey
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.csr_policy import IssuancePolicy
from iotdps.pki.keys import encode_private_key
from iotdps.secret import Secret
from iotdps_testing.net import free_port

__all__ = ["IssuingWorld", "garbage_server", "issuing_world"]

AUTH_KEY = "00112233445566778899aabbccddeeff"


def _pem(issuer: Issuer) -> str:
    return issuer.certificate.public_bytes(serialization.Encoding.PEM).decode()


class IssuingWorld:
    def __init__(self, env: Env, root: Issuer, sealing: SealingKey) -> None:
        self.env, self.root, self.sealing = env, root, sealing

    async def local_ca(self, name: str = "factory-ca", root: Issuer | None = None) -> None:
        ca = root or self.root
        body = {
            "kind": "local",
            "caChain": [_pem(ca)],
            "key": encode_private_key(ca.key, Secret("pw-1")).decode(),
            "passphrase": "pw-1",
        }
        await put_issuing_ca(self.env.store, self.sealing, name, body, actor=Actor("local", "test"))

    async def cfssl_ca(self, name: str, url: str) -> None:
        body = {"kind": "cfssl", "caChain": [_pem(self.root)], "url": url, "profile": "device", "authKey": AUTH_KEY}
        await put_issuing_ca(self.env.store, self.sealing, name, body, actor=Actor("local", "test"))

    async def group(self, gid: str = "fleet", policy: dict[str, Any] | None = None, **settings: Any) -> None:
        issuance = IssuancePolicy.from_json(policy) if policy is not None else None
        await self.env.group(sk_group(gid, issuance_policy=issuance, **settings))

    async def bundle(self, bundle_id: str = "fleet-roots") -> None:
        await put_trust_bundle(self.env.store, bundle_id, [self.root.certificate], actor=Actor("local", "test"))


async def issuing_world(**env_kw: Any) -> IssuingWorld:
    env = await Env(**env_kw).setup()
    sealing = SealingKey.generate()
    env.service.issuers = IssuerCache(sealing)
    key = generate_private_key()
    root = Issuer(create_root_ca("Issuing Test Root", key, Validity.days(90)), key)
    return IssuingWorld(env, root, sealing)


def expired_root() -> Issuer:
    key = generate_private_key()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    return Issuer(create_root_ca("Expired Root", key, Validity.days(30, now=long_ago)), key)


async def garbage_server() -> tuple[web.AppRunner, str]:
    """A loopback HTTP server that answers every request 200 with a body that is not JSON."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="<html>not cfssl</html>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"
