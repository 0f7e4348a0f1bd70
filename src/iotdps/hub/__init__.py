"""The minimal IoT hub: device registry, MQTT sessions, telemetry, twin, methods, cloud-to-device.

`HubRuntime` is the entry point (`iotdps up` builds one for all hub host names); the device
side of the same protocol is `iotdps.device`.
"""

from __future__ import annotations

from iotdps.hub.control import ControlClient, control_socket_path
from iotdps.hub.errors import DeviceNotConnected, MethodTimeout
from iotdps.hub.runtime import HubRuntime

__all__ = ["ControlClient", "DeviceNotConnected", "HubRuntime", "MethodTimeout", "control_socket_path"]
