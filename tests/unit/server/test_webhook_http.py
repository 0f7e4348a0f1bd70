"""The custom-allocation webhook over real HTTP on loopback: answers, timeouts, unreachable hosts,
and destinations refused inside the resolver (what is checked is what is dialled)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from iotdps.allocation.custom import build_request, call_webhook
from iotdps.allocation.destinations import DestinationRefused, WebhookDestinations
from iotdps.enrollment.models import (
    Attestation,
    CustomAllocationDefinition,
    IndividualEnrollment,
    SymmetricKeyAttestation,
)
from iotdps.refusals import Refused
from iotdps.server.webhook_http import AiohttpWebhookTransport

STRICT = WebhookDestinations()


def _enrollment() -> IndividualEnrollment:
    keys = SymmetricKeyAttestation.generate()
    return IndividualEnrollment("dev-1", Attestation("symmetricKey", symmetric_key=keys))


def _loopback_name() -> str:
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = set()
    if not addresses or not all(a.startswith("127.") for a in addresses):
        pytest.skip(f"this machine's name {name!r} does not resolve to loopback")
    return name


async def test_webhook_over_real_http_with_timeout() -> None:
    seen: list[Any] = []

    async def allocate(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body["deviceRuntimeContext"]["registrationId"] == "slow":
            await asyncio.sleep(2)
        return web.json_response({"iotHubHostName": body["linkedHubs"][-1], "payload": {"ok": True}})

    app = web.Application()
    app.router.add_post("/alloc", allocate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # Plain HTTP on loopback: allowed only because the allowlist names these prefixes.
    allowed = WebhookDestinations.parse([f"http://127.0.0.1:{port}/alloc", "http://127.0.0.1:1/"])
    transport = AiohttpWebhookTransport(destinations=allowed)
    try:
        definition = CustomAllocationDefinition(f"http://127.0.0.1:{port}/alloc?code=s3cret", "2021-10-01")
        hubs = ["a.local", "b.local"]
        body = build_request(_enrollment(), "dev-1", hubs, attestation_context={"symmetricKey": {}})
        answer = await call_webhook(transport, definition, body, hubs, timeout=5)
        assert (answer.hub, answer.payload) == ("b.local", {"ok": True})
        assert seen[0]["linkedHubs"] == hubs and "primaryKey" not in str(seen[0])

        slow = build_request(_enrollment(), "slow", hubs, attestation_context={"symmetricKey": {}})
        with pytest.raises(Refused) as err:
            await call_webhook(transport, definition, slow, hubs, timeout=0.3)
        assert "timed out" in err.value.message and "s3cret" not in err.value.message

        gone = CustomAllocationDefinition("http://127.0.0.1:1/alloc", "2021-10-01")
        with pytest.raises(Refused) as err:
            await call_webhook(transport, gone, body, hubs, timeout=2)
        assert "unreachable" in err.value.message
    finally:
        await transport.close()
        await runner.cleanup()


async def test_transport_refuses_what_the_name_resolves_to() -> None:
    name = _loopback_name()
    calls: list[str] = []

    async def allocate(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"iotHubHostName": "a.local"})

    app = web.Application()
    app.router.add_post("/alloc", allocate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    # The URL prefix names the host, so the rules pass it as written; the resolver still
    # refuses loopback for a URL that only passed as "https to some name".
    strict = AiohttpWebhookTransport(destinations=STRICT)
    by_prefix = AiohttpWebhookTransport(destinations=WebhookDestinations.parse([f"http://{name}:{port}/alloc"]))
    try:
        with pytest.raises(DestinationRefused) as refused:
            await strict.post_json(f"https://{name}:{port}/alloc", {}, 5)
        assert "resolves to 127." in str(refused.value)
        with pytest.raises(DestinationRefused):
            await strict.post_json(f"http://{name}:{port}/alloc", {}, 5)  # plain http
        assert calls == []
        answer = await by_prefix.post_json(f"http://{name}:{port}/alloc", {}, 5)
        assert answer.status == 200 and calls == ["/alloc"]
    finally:
        await strict.close()
        await by_prefix.close()
        await runner.cleanup()
