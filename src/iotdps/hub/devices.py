"""The hub's device registry record: who a device is on a hub, how it proves itself, its twin.

Shared by the provisioning core (which creates and moves identities, in the same transaction
as the registration record: both are rows of one store) and the hub (which authenticates
devices and serves their twin). It is hub domain with no I/O, so `provisioning` and
`attestation` may import it; `hub/records.py` holds the hub's other records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from iotdps.secret import Secret

__all__ = ["AuthType", "DeviceAuth", "DeviceIdentity", "DeviceStatus", "Twin", "generation_id"]

AuthType = Literal["sas", "selfSigned", "certificateAuthority", "none"]
DeviceStatus = Literal["enabled", "disabled"]


@dataclass(frozen=True, slots=True)
class DeviceAuth:
    """How a device proves itself to the hub.

    `sas`: primary/secondary symmetric keys (base64). `selfSigned`: X.509 leaf thumbprints
    (upper-case hex; SHA-256 and SHA-1 both accepted, as DPS-provisioned X.509 devices are
    registered on the hub by thumbprint even when they came through a CA group).

    `issued_thumbprints` (issue 18): the SHA-256 and SHA-1 thumbprints of the certificate the
    service issued to the device at registration, accepted at CONNECT whatever `type` says. It
    is kept apart from the credential above on purpose: the type, keys and thumbprints are the
    device's own (attestation) credential, which an enrollment's issuance policy either keeps
    (`keepExistingCredential`) or drops (then the type is `selfSigned` with no thumbprint of its
    own and the issued certificate alone opens the hub). Renewal replaces the issued thumbprints
    and never touches the kept credential: use `with_issued`.
    """

    type: AuthType
    primary_key: Secret[str] | None = None
    secondary_key: Secret[str] | None = None
    primary_thumbprints: tuple[str, ...] = ()
    secondary_thumbprints: tuple[str, ...] = ()
    issued_thumbprints: tuple[str, ...] = ()

    def with_issued(self, *thumbprints: str) -> DeviceAuth:
        """This credential with the issued certificate's thumbprints replaced by `thumbprints`
        (a new or renewed certificate): whatever else the device authenticates with stays."""
        return replace(self, issued_thumbprints=tuple(tp.upper() for tp in thumbprints))

    @property
    def issued_only(self) -> bool:
        """True when the issued certificate is the only credential (nothing else was kept)."""
        keys = self.primary_key is not None or self.secondary_key is not None
        return bool(self.issued_thumbprints) and not keys and not self.own_thumbprints

    @property
    def own_thumbprints(self) -> tuple[str, ...]:
        """The device's own (not issued) certificate thumbprints."""
        return (*self.primary_thumbprints, *self.secondary_thumbprints)


@dataclass(frozen=True, slots=True)
class Twin:
    """Tags and desired/reported property sections with their versions.

    Versions start at 1 and grow with every change of that section; the SDK needs
    `desired.$version` in every twin GET and every desired patch.
    """

    tags: Mapping[str, Any] = field(default_factory=dict)
    desired: Mapping[str, Any] = field(default_factory=dict)
    reported: Mapping[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1
    version: int = 1


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    hub: str
    device_id: str
    auth: DeviceAuth
    status: DeviceStatus = "enabled"
    iot_edge: bool = False
    twin: Twin = field(default_factory=Twin)
    registration_id: str | None = None
    etag: str | None = None
    created: datetime | None = None
    updated: datetime | None = None


def generation_id(device: DeviceIdentity) -> str:
    """IoT Hub's generationId: stable for one identity; a device deleted and created again gets a
    new one (its `created` differs). The hub stamps it on telemetry, the service API shows it."""
    created = device.created.isoformat() if device.created else ""
    digest = hashlib.sha256(f"{device.hub}/{device.device_id}/{created}".encode()).digest()
    return str(int.from_bytes(digest[:7], "big"))
