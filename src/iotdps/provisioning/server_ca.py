"""The built-in trust bundle that carries the server's own CAs, and who has not received it.

During a rotation of the server CA (server/ca_rotation.py) devices must learn the new CA
before the server presents a chain under it, or their next handshake fails. They learn it
the way seed 002 asks: from a trust bundle in their registration answer. `iotdps tls rotate`
publishes the bundle `iotdps-server-ca` with the old and the new CA; a registration whose
enrollment names no trust bundle of its own receives it (service._bundle_sent); `retire`
publishes its last version without the old CA. Only iotdps changes it: the management API and
the CLI refuse to write or delete that id (issuance.builtin).

Hub devices learn it the same way, at their next registration: the hub presents the same
server chain, so a device that re-registers before activation reaches both DPS and its hub
afterwards. (A desired property would reach connected devices sooner but needs the device to
report back before the status below could count it; the bundle is already recorded.)

Who would be stranded: the registration record keeps the (bundle id, version) the device was
last answered with (f18). A device holds the new CA if that bundle's current version contains
it and the record names that very version. Bundle versions are not kept, so a device answered
with an older version of a bundle that has since changed counts as not holding it: the list
may name a device that is in fact fine, never the reverse. For the built-in bundle this is
exact: between `rotate` and `retire` nothing else changes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from iotdps.issuance.builtin import BUILTIN_BUNDLE_ID, check_not_builtin, is_builtin
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.ports import UnitOfWork
from iotdps.provisioning.records import RegistrationRecord

__all__ = [
    "BUILTIN_BUNDLE_ID",
    "Unreached",
    "check_not_builtin",
    "holds",
    "is_builtin",
    "publish_server_cas",
    "unreached",
]

_PAGE = 500


async def publish_server_cas(
    uow: UnitOfWork, certificates: Sequence[x509.Certificate], now: datetime | None = None
) -> TrustBundle:
    """Make the built-in bundle hold exactly `certificates` (a new version only when they changed)."""
    current = await uow.trust_bundles.get(BUILTIN_BUNDLE_ID, for_update=True)
    if current is not None and list(current.certificates) == list(certificates):
        return current
    if current is None:
        bundle = TrustBundle.new(BUILTIN_BUNDLE_ID, certificates, now=now)
    else:
        bundle = current.revised(certificates, now=now)
    return await uow.trust_bundles.put(bundle)


def holds(record: RegistrationRecord, bundles: dict[str, TrustBundle], ca: x509.Certificate) -> bool:
    """Whether the device of `record` was given a bundle containing `ca` (see the module doc).
    `bundles`: the current bundles by lower-case id."""
    if record.trust_bundle_id is None or record.trust_bundle_version is None:
        return False
    bundle = bundles.get(record.trust_bundle_id.lower())
    return bundle is not None and bundle.version == record.trust_bundle_version and bundle.contains(ca)


@dataclass(frozen=True, slots=True)
class Unreached:
    """A device that activation would strand, and what it was last given."""

    registration_id: str
    status: str
    assigned_hub: str | None
    device_id: str | None
    trust_bundle_id: str | None
    trust_bundle_version: int | None


async def unreached(uow: UnitOfWork, ca: x509.Certificate) -> list[Unreached]:
    """Every registration whose device has not been given a bundle containing `ca`."""
    bundles = {b.bundle_id.lower(): b for b in await uow.trust_bundles.list()}
    out: list[Unreached] = []
    continuation: str | None = None
    while True:
        page = await uow.registrations.list(_PAGE, continuation)
        out += [_unreached(r) for r in page.items if not holds(r, bundles, ca)]
        continuation = page.continuation
        if not continuation:
            return sorted(out, key=lambda u: u.registration_id.lower())


def _unreached(r: RegistrationRecord) -> Unreached:
    return Unreached(
        r.registration_id, r.status, r.assigned_hub, r.device_id, r.trust_bundle_id, r.trust_bundle_version
    )
