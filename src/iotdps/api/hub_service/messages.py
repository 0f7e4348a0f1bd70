"""Cloud-to-device operations that reach a live device through the hub: direct methods and
cloud-to-device messages.

    POST   /twins/{id}/methods                  invoke a direct method
    POST   /devices/{id}/messages/deviceBound   iotdps: queue a cloud-to-device message

`azure-iot-hub` sends cloud-to-device messages over AMQP only (`send_c2d_message` uses uamqp
to `amqps://<host>:5671`); iotdps has no AMQP listener, so C2D has its own REST route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from iotdps.api._http import ApiContext, json_object, json_response, read_json
from iotdps.api.errors import ApiError
from iotdps.api.hub_service.common import device_id_in, device_not_found, hub_of, load_device, no_hub
from iotdps.errors import InvalidInput, IotdpsError, NotFound

__all__ = ["invoke_method", "send_c2d"]

_MAX_TIMEOUT = 300
_CONNECT_POLL = 0.1


def _int_field(doc: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidInput(f"{name} must be a whole number of seconds")
    if not low <= int(value) <= _MAX_TIMEOUT:
        raise InvalidInput(f"{name} must be between {low} and {_MAX_TIMEOUT} seconds")
    return int(value)


async def invoke_method(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = hub_of(ctx), device_id_in(request)
    doc = json_object(await read_json(request, ctx), "the method request")
    name = doc.get("methodName")
    if not isinstance(name, str) or not name:
        raise InvalidInput("methodName is required")
    response_timeout = _int_field(doc, "responseTimeoutInSeconds", 30, 1)
    connect_timeout = _int_field(doc, "connectTimeoutInSeconds", 0, 0)
    await load_device(ctx, hub, device_id)  # DeviceNotFound before DeviceNotOnline
    runtime = ctx.hub
    if runtime is None:
        raise no_hub()
    # connectTimeoutInSeconds: how long to wait for an offline device to come online (and
    # subscribe to methods) before the call counts as failed, as IoT Hub does.
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            status, payload = await runtime.invoke_method(hub, device_id, name, doc.get("payload"), response_timeout)
            break
        except NotFound:
            if time.monotonic() >= deadline:
                raise ApiError(
                    404, 404103, "DeviceNotOnline", f"device {device_id} is not online or not listening for methods"
                ) from None
            await asyncio.sleep(_CONNECT_POLL)
        except IotdpsError as exc:
            if exc.http_status == 504:  # the hub's MethodTimeout
                raise ApiError(504, 504101, "GatewayTimeout", exc.message) from None
            raise
    return json_response({"status": status, "payload": payload})


# Request field -> the hub's wire key of that system property.
_C2D_SYSTEM = {
    "messageId": "$.mid",
    "correlationId": "$.cid",
    "contentType": "$.ct",
    "contentEncoding": "$.ce",
    "userId": "$.uid",
    "ack": "iothub-ack",
}


async def send_c2d(ctx: ApiContext, request: web.Request) -> web.StreamResponse:
    hub, device_id = hub_of(ctx), device_id_in(request)
    doc = json_object(await read_json(request, ctx), "the message")
    if "body" in doc and "bodyBase64" in doc:
        raise InvalidInput("give body or bodyBase64, not both")
    if "bodyBase64" in doc:
        encoded = doc["bodyBase64"]
        if not isinstance(encoded, str):
            raise InvalidInput("bodyBase64 must be a string")
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("bodyBase64 is not base64") from None
    else:
        text = doc.get("body", "")
        if not isinstance(text, str):
            raise InvalidInput("body must be a string (use bodyBase64 for bytes)")
        body = text.encode("utf-8")
    props = doc.get("properties") or {}
    if not isinstance(props, Mapping) or not all(isinstance(v, str) for v in props.values()):
        raise InvalidInput("properties must map names to strings")
    if any(str(k).startswith("$") or k == "iothub-ack" or not k for k in props):
        raise InvalidInput("application property names must be non-empty and not start with '$'")
    wire: dict[str, str] = {str(k): str(v) for k, v in props.items()}
    for field_name, key in _C2D_SYSTEM.items():
        value = doc.get(field_name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{field_name} must be a non-empty string")
        wire[key] = value
    if "ack" in doc and doc["ack"] not in ("none", "positive", "negative", "full"):
        raise InvalidInput("ack must be none, positive, negative or full")
    ttl = doc.get("ttlSeconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
        raise InvalidInput("ttlSeconds must be a number")
    await load_device(ctx, hub, device_id)
    if ctx.hub is None:
        raise no_hub()
    try:
        message_id = await ctx.hub.send_c2d(hub, device_id, body, wire, None if ttl is None else float(ttl))
    except NotFound:
        raise device_not_found(device_id) from None
    return json_response({"messageId": message_id}, status=202)
