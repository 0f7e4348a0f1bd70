"""The IoT hub service API subset (api-version 2021-04-12, what `azure-iot-hub` 2.7.0 sends).

    GET    /devices                     identities of the hub (`top`: at most this many)
    GET    /devices/{id}                one identity (with its keys, as Azure answers)
    PUT    /devices/{id}                create (no If-Match; 409 if it exists) or update (If-Match)
    DELETE /devices/{id}                delete (If-Match; `*` or absent: unconditional)
    GET    /twins/{id}                  the twin: tags, desired and reported properties
    PATCH  /twins/{id}                  merge tags and desired properties (If-Match: twin etag)
    PUT    /twins/{id}                  replace tags and desired properties
    POST   /twins/{id}/methods          invoke a direct method
    POST   /devices/{id}/messages/deviceBound   iotdps: queue a cloud-to-device message
    GET    /devices/{id}/messages/events        iotdps: recent telemetry of the device
    GET    /devices/{id}/messages/events/stream iotdps: new telemetry as server-sent events
    GET    /messages/events                     iotdps: recent telemetry of every device of the hub

Which hub: every hub has its own host name, and the SDK addresses one by its connection
string's HostName (`HostName=<hub host>:<management port>`): the request's `Host` names the
hub, and the token's `sr` must name the same hub (a token for one hub is useless on another).

Etags: a device identity and its twin change independently (a device reporting a property
must not break an operator's identity update), so each gets its own etag derived from what it
covers: the identity's from its auth, status and capabilities, the twin's from its version.
The store's row etag guards every write underneath, so a concurrent writer is never lost.

A desired-properties change goes through the hub (`HubOperations.update_desired`), which
pushes it to the device when it is connected. Errors carry IoT Hub's codes (DeviceNotFound
404001, DeviceAlreadyExists 409001, PreconditionFailed 412002, DeviceNotOnline 404103,
GatewayTimeout 504101).

`azure-iot-hub` sends cloud-to-device messages over AMQP only (`send_c2d_message` uses uamqp
to `amqps://<host>:5671`); iotdps has no AMQP listener, so C2D has its own REST route.

One module per resource: `devices`, `twins`, `messages` (direct methods and cloud-to-device),
`telemetry` (read and stream); `common` holds what they share (the hub and device id of a
request, etags, IoT Hub's error codes). The running hub is reached through
`iotdps.ports.HubOperations`.
"""

from __future__ import annotations

from iotdps.api.hub_service.common import HUB_API_VERSION, identity_etag, twin_etag
from iotdps.api.hub_service.devices import delete_device, device_json, get_device, list_devices, put_device
from iotdps.api.hub_service.messages import invoke_method, send_c2d
from iotdps.api.hub_service.telemetry import read_events, read_hub_events, stream_events
from iotdps.api.hub_service.twins import get_twin, patch_twin, replace_twin, twin_json

__all__ = [
    "HUB_API_VERSION",
    "delete_device",
    "device_json",
    "get_device",
    "get_twin",
    "identity_etag",
    "invoke_method",
    "list_devices",
    "patch_twin",
    "put_device",
    "read_events",
    "read_hub_events",
    "replace_twin",
    "send_c2d",
    "stream_events",
    "twin_etag",
    "twin_json",
]
