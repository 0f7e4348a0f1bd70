"""The WebhookTransport adapter over aiohttp (the one HTTP client of the project): the
custom-allocation webhook's way out (the port: `iotdps.ports.WebhookTransport`).

A non-JSON or non-object body is reported as `body=None`; the caller decides it is a failure.
Transport failures surface as TimeoutError or OSError, as the port promises; a destination the
rules refuse (allocation.destinations) as DestinationRefused, an OSError, before any byte leaves.

Destinations are checked where the connection is made: the URL as written before the request,
and every address its host name resolves to inside the connector's resolver, so what is
checked is what is dialled (no second lookup a rebinding DNS server could answer differently).
No DNS cache, no proxy from the environment, no redirects.
"""

from __future__ import annotations

import contextvars
import socket
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from iotdps import metrics
from iotdps.allocation.destinations import DestinationRefused, Verdict, WebhookDestinations
from iotdps.jsonload import InvalidJson, load_json
from iotdps.ports import WebhookResponse

__all__ = ["AiohttpWebhookTransport"]

_MAX_BODY = 1 << 20  # a webhook answer is a few hundred bytes; refuse to buffer megabytes
# The verdict of the request being made, for the resolver (it sees only host and port).
_VERDICT: contextvars.ContextVar[Verdict | None] = contextvars.ContextVar("webhook_verdict", default=None)


class _GuardedResolver(AbstractResolver):
    """Resolves, then keeps only the addresses the current request's verdict allows."""

    def __init__(self, destinations: WebhookDestinations) -> None:
        self._inner = ThreadedResolver()
        self._destinations = destinations

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        verdict = _VERDICT.get() or Verdict(host.lower())  # no verdict: the strict rules
        addresses = [r["host"] for r in found]
        allowed = set(self._destinations.allowed_addresses(verdict, addresses))
        if not allowed:
            raise DestinationRefused(
                self._destinations.resolved_refusal(verdict, addresses) or f"{host} resolved to no address"
            )
        return [r for r in found if r["host"] in allowed]

    async def close(self) -> None:
        await self._inner.close()


def _refusal_in(exc: BaseException) -> DestinationRefused | None:
    seen: BaseException | None = exc
    for _ in range(5):  # aiohttp wraps the resolver's error once or twice
        if seen is None:
            return None
        if isinstance(seen, DestinationRefused):
            return seen
        inner = getattr(seen, "os_error", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


class AiohttpWebhookTransport:
    """One shared ClientSession; call `close()` on shutdown. `destinations`: where webhooks may
    go (default: HTTPS to public addresses only)."""

    def __init__(
        self, session: aiohttp.ClientSession | None = None, destinations: WebhookDestinations | None = None
    ) -> None:
        self._session = session
        self._owned = session is None
        self.destinations = destinations or WebhookDestinations()

    async def _get(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.destinations), use_dns_cache=False)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> WebhookResponse:
        started = time.perf_counter()
        outcome = "failed"
        try:
            response = await self._post_json(url, body, timeout)
        except DestinationRefused:
            outcome = "refused"
            raise
        except TimeoutError:
            outcome = "timeout"
            raise
        else:
            outcome = "ok" if 200 <= response.status < 300 else "http_error"
            return response
        finally:
            metrics.webhook_call(outcome, time.perf_counter() - started)

    async def _post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> WebhookResponse:
        verdict = self.destinations.check(url)
        if verdict.refusal is not None:
            raise DestinationRefused(verdict.refusal)
        session = await self._get()
        token = _VERDICT.set(verdict)
        try:
            async with session.post(
                url, json=dict(body), timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_BODY + 1)
                status = response.status
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:
            refused = _refusal_in(exc)
            if refused is not None:
                raise refused from None
            raise OSError(f"webhook request failed: {type(exc).__name__}") from exc
        finally:
            _VERDICT.reset(token)
        parsed: Mapping[str, Any] | None = None
        if len(raw) <= _MAX_BODY:
            try:
                doc = load_json(raw, what="the webhook's answer")
            except InvalidJson:
                doc = None
            if isinstance(doc, dict):
                parsed = doc
        return WebhookResponse(status, parsed)

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None
