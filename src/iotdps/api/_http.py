"""Small request/response helpers shared by the handlers: JSON bodies, If-Match, paging."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from iotdps.allocation.destinations import WebhookDestinations
from iotdps.audit import Actor
from iotdps.errors import InvalidInput
from iotdps.jsonload import load_json
from iotdps.ports import HubOperations, Store
from iotdps.provisioning.service import ProvisioningService

if TYPE_CHECKING:
    from iotdps.issuance.sealing import SealingKey

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "ApiContext",
    "ServiceAbout",
    "if_match",
    "json_object",
    "json_response",
    "page_request",
    "paged_response",
    "read_json",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ServiceAbout:
    """What the server tells operators about itself (GET /status): the host name devices use,
    the endpoints it listens on, and the hubs whose service API and devices it serves."""

    device_host: str | None = None
    endpoints: tuple[str, ...] = ()
    hubs_served: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiContext:
    store: Store
    service: ProvisioningService
    max_body: int
    on_trust_changed: Callable[[], Awaitable[None]] | None = None
    hub: HubOperations | None = None
    # Hub service API routes: the hub this request addresses (its Host), set per request.
    hub_name: str | None = None
    # Where custom-allocation webhooks may point (checked when an enrollment is written).
    webhook_destinations: WebhookDestinations = field(default_factory=WebhookDestinations)
    about: ServiceAbout = ServiceAbout()
    # Seals the secrets of issuing CA objects (issue 18); None: such objects cannot be written.
    sealing: SealingKey | None = None
    # Who this request acts as (the audit trail's actor), set per request once it is authorized.
    actor: Actor | None = None

    @property
    def acting(self) -> Actor:
        if self.actor is None:  # a route without a permission cannot change anything
            raise RuntimeError("this request was not authorized as a policy")
        return self.actor

    async def trust_changed(self) -> None:
        """Tell the TLS layer its anchors changed (verified CAs, X.509 enrollments, groups)."""
        if self.on_trust_changed is not None:
            await self.on_trust_changed()


async def read_json(request: web.Request, ctx: ApiContext, *, required: bool = True) -> Any:
    """The request body as JSON. Oversized, non-UTF-8, invalid or too deeply nested JSON is a 400
    that says so (iotdps.jsonload)."""
    declared = request.content_length
    if declared is not None and declared > ctx.max_body:
        raise InvalidInput(f"the request body is {declared} bytes; at most {ctx.max_body} are accepted")
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw.extend(chunk)
        if len(raw) > ctx.max_body:
            raise InvalidInput(f"the request body is larger than {ctx.max_body} bytes")
    if not raw.strip():
        if required:
            raise InvalidInput("the request needs a JSON body")
        return None
    return load_json(raw, what="the request body")


def json_object(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{what} must be a JSON object")
    return doc


def if_match(request: web.Request) -> str | None:
    """The If-Match etag, quoted or not (`W/` dropped); `*` is kept as the wildcard."""
    value = request.headers.get("If-Match")
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value or None


def page_request(request: web.Request) -> tuple[int, str | None]:
    raw = request.headers.get("x-ms-max-item-count")
    size = DEFAULT_PAGE_SIZE
    if raw is not None and raw.strip():
        try:
            size = int(raw)
        except ValueError:
            raise InvalidInput("x-ms-max-item-count must be a number") from None
        if size < 1:
            raise InvalidInput("x-ms-max-item-count must be at least 1")
        size = min(size, MAX_PAGE_SIZE)
    token = request.headers.get("x-ms-continuation") or None
    return size, token


def json_response(doc: Any, *, status: int = 200, etag: str | None = None) -> web.Response:
    headers = {"ETag": f'"{etag}"'} if etag else None
    return web.Response(status=status, text=json.dumps(doc), content_type=_JSON, headers=headers)


def paged_response(items: list[Any], continuation: str | None, size: int, item_type: str) -> web.Response:
    headers = {"x-ms-max-item-count": str(size), "x-ms-item-type": item_type}
    if continuation:
        headers["x-ms-continuation"] = continuation
    return web.Response(status=200, text=json.dumps(items), content_type=_JSON, headers=headers)
