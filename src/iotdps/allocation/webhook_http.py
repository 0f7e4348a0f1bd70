"""The WebhookTransport adapter over aiohttp (the one HTTP client of the project).

A non-JSON or non-object body is reported as `body=None`; the caller decides it is a failure.
Transport failures surface as TimeoutError or OSError, as the port promises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from iotdps.jsonload import InvalidJson, load_json
from iotdps.provisioning.ports import WebhookResponse

__all__ = ["AiohttpWebhookTransport"]

_MAX_BODY = 1 << 20  # a webhook answer is a few hundred bytes; refuse to buffer megabytes


class AiohttpWebhookTransport:
    """One shared ClientSession; call `close()` on shutdown."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owned = session is None

    async def _get(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def post_json(self, url: str, body: Mapping[str, Any], timeout: float) -> WebhookResponse:
        session = await self._get()
        try:
            async with session.post(
                url, json=dict(body), timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as response:
                raw = await response.content.read(_MAX_BODY + 1)
                status = response.status
        except TimeoutError:
            raise
        except aiohttp.ClientError as exc:
            raise OSError(f"webhook request failed: {type(exc).__name__}") from exc
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
