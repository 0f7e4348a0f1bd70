"""Errors of the hub's cloud-side operations (methods, C2D, twin), mapped to HTTP at the edges."""

from __future__ import annotations

from iotdps.errors import IotdpsError, NotFound

__all__ = ["DeviceNotConnected", "MethodTimeout"]


class DeviceNotConnected(NotFound):
    """The device is not connected, or not listening for what was asked (Azure: 404 DeviceNotOnline)."""


class MethodTimeout(IotdpsError):
    """The device did not answer a direct method in time (Azure: 504 GatewayTimeout)."""

    http_status = 504
