"""Device identities on a hub: the record the provisioning service writes and the hub reads."""

from iotdps.registry.models import DeviceAuth, DeviceIdentity, Twin

__all__ = ["DeviceAuth", "DeviceIdentity", "Twin"]
