"""The server CA rotation's records on every store (memory, SQLite, PostgreSQL): the built-in
trust bundle's versions, and which registrations have not received a bundle with the new CA
(provisioning/server_ca.py), over more than one page of registrations."""

from __future__ import annotations

import pytest

from iotdps.pki import Validity, create_root_ca, generate_private_key
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.ports import Store
from iotdps.provisioning import server_ca
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.server_ca import BUILTIN_BUNDLE_ID, publish_server_cas, unreached


def _ca(cn: str):  # type: ignore[no-untyped-def]
    return create_root_ca(cn, generate_private_key(), Validity.days(30), path_length=0)


async def test_publish_and_who_is_unreached(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new, other = _ca("Server CA old"), _ca("Server CA new"), _ca("Fleet root")
    async with store.begin() as uow:
        first = await publish_server_cas(uow, [old, new])
        same = await publish_server_cas(uow, [old, new])  # unchanged: no new version
        await uow.trust_bundles.put(TrustBundle.new("fleet-roots", [other]))
    assert first.version == same.version == 1 and first.bundle_id == BUILTIN_BUNDLE_ID

    records = [
        # Given the built-in bundle's current version: holds the new CA.
        RegistrationRecord("dev-got-it", "assigned", "op", trust_bundle_id="IOTDPS-Server-CA", trust_bundle_version=1),
        # Never given a bundle (the SDK's api-version), or another bundle without the CA.
        RegistrationRecord("dev-sdk", "assigned", "op"),
        RegistrationRecord("dev-fleet", "assigned", "op", trust_bundle_id="fleet-roots", trust_bundle_version=1),
        RegistrationRecord("dev-failed", "failed", "op"),
    ]
    # Enough devices for several pages of the registration listing.
    records += [
        RegistrationRecord(f"bulk-{i:03}", "assigned", "op", trust_bundle_id=BUILTIN_BUNDLE_ID, trust_bundle_version=1)
        for i in range(7)
    ]
    async with store.begin() as uow:
        for record in records:
            await uow.registrations.put(record)
    monkeypatch.setattr(server_ca, "_PAGE", 3)
    async with store.read() as uow:
        missing = await unreached(uow, new)
    assert [u.registration_id for u in missing] == ["dev-failed", "dev-fleet", "dev-sdk"]
    assert {u.registration_id: u.status for u in missing}["dev-failed"] == "failed"

    # The bundle's next version without the old CA: devices given version 1 no longer count
    # as holding what the bundle now says (versions are not kept; see the module doc).
    async with store.begin() as uow:
        second = await publish_server_cas(uow, [new])
    assert second.version == 2 and list(second.certificates) == [new]
    async with store.read() as uow:
        assert len(await unreached(uow, new)) == len(records)
        # The fleet bundle holds `other`: its devices hold that CA.
        assert "dev-fleet" not in [u.registration_id for u in await unreached(uow, other)]
