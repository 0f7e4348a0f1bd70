"""`RemoteHub`: the hub commands (`device list`, `twin`, `method invoke`, `c2d send`,
`telemetry tail`) against a running iotdps's hub service API, for `--server` /
`--connection-string`.

Each call is one signed request. The token names the hub (`sr`) and so does the `x-iotdps-hub`
header, so one management URL serves every hub of the server; a policy with the hub's rights
(`iothubowner`, or `service` for everything but the registry writes) is needed, as on Azure.
The answers are turned into the shapes the local commands print, so a script reads the same
output whichever way the command went. Imported only for `--server` (aiohttp stays out of the
local commands).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from iotdps.cli.remote import ApiHttp
from iotdps.cli.server_target import ServerTarget
from iotdps.errors import NotFound
from iotdps.timestamps import parse_time

__all__ = ["RemoteHub", "telemetry_line_doc"]

_HUB_API_VERSION = "2021-04-12"
_HUB_NOT_SERVED = 404002  # IoT Hub's IotHubNotFound, answered for a hub the server does not serve
_MAX_DEVICES = 1000  # what GET /devices answers at most (Azure's `top` limit)
_SLACK = 15.0  # seconds the HTTP request waits beyond a direct method's own timeout


def _seg(value: str) -> str:
    return quote(value, safe="")


def telemetry_line_doc(event: Mapping[str, Any]) -> dict[str, Any]:
    """A TelemetryEvent of the API as the local `telemetry tail` prints a message."""
    doc: dict[str, Any] = {
        "seq": event["sequenceNumber"],
        "enqueuedTime": parse_time(str(event["enqueuedTimeUtc"])).isoformat(),
        "deviceId": event.get("deviceId"),
        "systemProperties": dict(event.get("systemProperties") or {}),
        "properties": dict(event.get("applicationProperties") or {}),
    }
    body = event.get("body")
    if isinstance(body, str):
        doc["body"] = body
    else:
        doc["bodyBase64"] = str(event.get("bodyBase64") or base64.b64encode(b"").decode())
    return doc


class RemoteHub:
    """Hub `hub` of the iotdps at `target`."""

    def __init__(self, target: ServerTarget, hub: str) -> None:
        self.hub = hub
        self.http = ApiHttp(
            target,
            resource=hub,
            headers={"x-iotdps-hub": hub},
            api_version=_HUB_API_VERSION,
            error_codes={_HUB_NOT_SERVED: NotFound(f"hub {hub} is not served by {target.url}")},
        )

    async def close(self) -> None:
        await self.http.close()

    async def list_devices(self) -> tuple[list[dict[str, Any]], bool]:
        """The hub's devices as `device list` shows them, and whether the list was cut at the
        API's limit (1000)."""
        docs, _ = await self.http.call("GET", "/devices", query={"top": str(_MAX_DEVICES)})
        rows = [
            {"deviceId": d["deviceId"], "status": d["status"], "auth": (d.get("authentication") or {}).get("type")}
            for d in docs
        ]
        return rows, len(rows) >= _MAX_DEVICES

    async def twin(self, device_id: str) -> dict[str, Any]:
        """The twin as the local `twin show` prints it (`etag` is the twin's: what
        `twin update-desired --if-match` takes here)."""
        doc, _ = await self.http.call("GET", f"/twins/{_seg(device_id)}")
        return _twin_doc(doc)

    async def update_desired(self, device_id: str, patch: Mapping[str, Any], if_match: str | None) -> dict[str, Any]:
        body = {"properties": {"desired": dict(patch)}}
        doc, _ = await self.http.call("PATCH", f"/twins/{_seg(device_id)}", body, if_match=if_match)
        twin = _twin_doc(doc)
        return {"version": twin["version"], "properties": twin["properties"], "tags": twin["tags"]}

    async def invoke_method(self, device_id: str, name: str, payload: Any, timeout: float) -> dict[str, Any]:
        # The API counts whole seconds (1..300); the local command takes fractions.
        seconds = max(1, min(300, math.ceil(timeout)))
        body = {"methodName": name, "payload": payload, "responseTimeoutInSeconds": seconds}
        doc, _ = await self.http.call("POST", f"/twins/{_seg(device_id)}/methods", body, timeout=seconds + _SLACK)
        return {"status": doc["status"], "payload": doc.get("payload")}

    async def send_c2d(self, device_id: str, body: str, properties: Mapping[str, str], ttl: float | None) -> str:
        doc: dict[str, Any] = {"body": body, "properties": dict(properties)}
        if ttl is not None:
            doc["ttlSeconds"] = ttl
        answer, _ = await self.http.call("POST", f"/devices/{_seg(device_id)}/messages/deviceBound", doc)
        return str(answer["messageId"])

    async def events(self, device_id: str | None, *, after: int | None, limit: int) -> list[dict[str, Any]]:
        """Telemetry, oldest first: the newest `limit` (after=None) or those after `after`."""
        path = f"/devices/{_seg(device_id)}/messages/events" if device_id else "/messages/events"
        query = {"limit": str(limit)}
        if after is not None:
            query["after"] = str(after)
        docs, _ = await self.http.call("GET", path, query=query)
        return [telemetry_line_doc(d) for d in docs]


def _twin_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    props = doc.get("properties") or {}
    return {
        "deviceId": doc["deviceId"],
        "etag": doc.get("etag"),
        "version": doc.get("version"),
        "status": doc.get("status"),
        "tags": dict(doc.get("tags") or {}),
        "properties": {"desired": props.get("desired") or {}, "reported": props.get("reported") or {}},
    }
