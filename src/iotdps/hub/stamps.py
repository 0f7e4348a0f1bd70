"""What the hub stamps on the messages of a connection, and what a device may not set itself.

IoT Hub documents these system properties as "set by IoT Hub" on device-to-cloud messages
(iothub-connection-device-id, -module-id, -auth-method, -auth-generation-id,
iothub-enqueuedtime). A device that could set them could pass its messages off as another
device's, so whatever a device puts in either bag under those names (our names in the system
bag, the long names as application properties, for a reader that merges both bags) is dropped,
and the hub stamps the connection's own values on every message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from iotdps.hub.devices import DeviceIdentity, generation_id

__all__ = ["HUB_SET_PROPERTIES", "identity_properties", "without_hub_set"]

HUB_SET_PROPERTIES = frozenset(
    {
        "connection_device_id",
        "connection_module_id",
        "connection_auth_method",
        "connection_auth_generation_id",
        "enqueued_time",
        "iothub-connection-device-id",
        "iothub-connection-module-id",
        "iothub-connection-auth-method",
        "iothub-connection-auth-generation-id",
        "iothub-enqueuedtime",
    }
)


def identity_properties(device: DeviceIdentity, auth: Literal["sas", "x509"]) -> dict[str, str | None]:
    """What the hub stamps on a connection's messages. The auth method is the JSON object IoT
    Hub puts there (scope, type, issuer)."""
    method = {
        "scope": "device",
        "type": "sas" if auth == "sas" else "x509Certificate",
        "issuer": "iothub" if auth == "sas" else "external",
        "acceptingIpFilterRule": None,
    }
    return {
        "connection_device_id": device.device_id,
        "connection_auth_method": json.dumps(method, separators=(",", ":")),
        "connection_auth_generation_id": generation_id(device),
    }


def without_hub_set(bag: Mapping[str, str | None]) -> dict[str, str | None]:
    """`bag` without the properties only the hub may set."""
    return {k: v for k, v in bag.items() if k.lower() not in HUB_SET_PROPERTIES}
