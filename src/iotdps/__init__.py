"""iotdps: a self-hosted Device Provisioning Service, CA toolkit and minimal IoT hub.

Wire-compatible with the Azure IoT device SDKs: a device that provisions against Azure DPS
provisions against iotdps with only the host name and server CA changed.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
