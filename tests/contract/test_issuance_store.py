"""Certificate issuance records (issue 18) on every store: issuing CA objects (secret sealed),
trust bundles (case-insensitive ids, versions, etags), issued certificates, the registration
record's trust bundle fields and its view with the issued certificate, and hub identities'
issued thumbprints beside the credential they kept."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from iotdps.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.issuance.models import IssuedCertificate, IssuingCa
from iotdps.issuance.sealing import SealingKey
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.keys import encode_private_key
from iotdps.pki.trust_bundle import TrustBundle
from iotdps.ports import Store
from iotdps.provisioning.record_view import registration_view
from iotdps.provisioning.records import RegistrationRecord
from iotdps.secret import Secret
from iotdps.store import SqlStore
from iotdps.store import tables as t
from iotdps.timestamps import format_time


def _root(cn: str) -> Issuer:
    key = generate_private_key()
    return Issuer(create_root_ca(cn, key, Validity.days(30)), key, name=cn.replace(" ", "-"))


@pytest.fixture(scope="module")
def roots() -> list[Issuer]:
    return [_root("Contract Root A"), _root("Contract Root B")]


async def test_issuing_ca_round_trip_keeps_the_secret_sealed(store: Store, roots: list[Issuer]) -> None:
    sealing = SealingKey.generate()
    sealed = sealing.seal(Secret("00112233445566778899aabbccddeeff"), "cfssl-ca")
    ca = IssuingCa("cfssl-ca", "cfssl", (roots[0].certificate,), sealed, url="https://127.0.0.1:8888", profile="device")
    key_pem = encode_private_key(roots[1].key, Secret("pass phrase")).decode("ascii")
    local = IssuingCa(
        "factory-ca",
        "local",
        (roots[1].certificate,),
        sealing.seal(Secret("pass phrase"), "factory-ca"),
        key_pem=key_pem,
    )
    async with store.begin() as uow:
        written = await uow.issuing_cas.put(ca)
        await uow.issuing_cas.put(local)
    assert written.etag and written.created
    async with store.read() as uow:
        got = await uow.issuing_cas.get("cfssl-ca")
        names = [c.name for c in await uow.issuing_cas.list()]
    assert got is not None and got.url == "https://127.0.0.1:8888" and got.profile == "device"
    assert got.ca_chain == (roots[0].certificate,) and got.etag == written.etag
    assert sealing.open(got.sealed_secret, "cfssl-ca").reveal() == "00112233445566778899aabbccddeeff"
    assert names == ["cfssl-ca", "factory-ca"]
    # The management document never shows the secret or the key.
    shown = json.dumps(got.to_json())
    assert "00112233" not in shown and got.sealed_secret not in shown
    assert "PRIVATE KEY" not in json.dumps(local.to_json())
    if isinstance(store, SqlStore):  # what the database holds: no plain secret
        if isinstance(store.engine, AsyncEngine):
            async with store.engine.connect() as conn:
                rows = (await conn.execute(select(t.issuing_cas.c.doc))).all()
        else:
            with store.engine.connect() as sync_conn:
                rows = sync_conn.execute(select(t.issuing_cas.c.doc)).all()
        stored = json.dumps([r.doc for r in rows])
        assert "00112233445566778899aabbccddeeff" not in stored and "pass phrase" not in stored
    with pytest.raises(PreconditionFailed):
        async with store.begin() as uow:
            await uow.issuing_cas.put(ca, if_match="stale")
    async with store.begin() as uow:
        await uow.issuing_cas.delete("cfssl-ca", if_match=written.etag)
    with pytest.raises(NotFound):
        async with store.begin() as uow:
            await uow.issuing_cas.delete("cfssl-ca")


async def test_token_issuing_ca_round_trip_holds_a_uri_and_nothing_secret(store: Store, roots: list[Issuer]) -> None:
    uri = "pkcs11:token=issuing;object=line-ca;id=%E1%02;type=private"
    ca = IssuingCa("token-ca", "pkcs11", (roots[0].certificate,), "", pkcs11_uri=uri)
    async with store.begin() as uow:
        written = await uow.issuing_cas.put(ca)
    async with store.read() as uow:
        got = await uow.issuing_cas.get("token-ca")
    assert got is not None and got.kind == "pkcs11" and got.pkcs11_uri == uri and got.etag == written.etag
    assert got.ca_chain == (roots[0].certificate,) and got.sealed_secret == "" and got.key_pem is None
    shown = got.to_json()
    assert shown["pkcs11Uri"] == uri and "passphrase" not in shown and "authKey" not in shown
    stored = got.to_doc()
    assert stored["pkcs11Uri"] == uri and "keyPem" not in stored and stored["sealedSecret"] == ""
    with pytest.raises(InvalidInput, match="no key or secret"):
        IssuingCa("token-ca", "pkcs11", (roots[0].certificate,), "v1.sealed", pkcs11_uri=uri)
    async with store.begin() as uow:
        await uow.issuing_cas.delete("token-ca")


async def test_trust_bundle_versions_etags_and_case_insensitive_ids(store: Store, roots: list[Issuer]) -> None:
    first = TrustBundle.new("Fleet-Roots", [roots[0].certificate])
    async with store.begin() as uow:
        v1 = await uow.trust_bundles.put(first, if_match=None)
    assert v1.version == 1 and v1.bundle_id == "Fleet-Roots"
    async with store.begin() as uow:
        current = await uow.trust_bundles.get("fleet-roots", for_update=True)
        assert current is not None and current.etag == v1.etag
        v2 = await uow.trust_bundles.put(current.revised([r.certificate for r in roots]), if_match=current.etag)
    assert v2.version == 2 and v2.etag != v1.etag and v2.created == v1.created and v2.modified >= v1.modified
    assert v2.contains(roots[1].certificate)
    with pytest.raises(PreconditionFailed):
        async with store.begin() as uow:
            await uow.trust_bundles.put(v2.revised([roots[0].certificate]), if_match=v1.etag)
    async with store.read() as uow:
        again = await uow.trust_bundles.get("FLEET-ROOTS")
        listed = await uow.trust_bundles.list()
    assert again is not None and again.version == 2 and again.to_wire() == v2.to_wire()
    assert [b.bundle_id for b in listed] == ["Fleet-Roots"]
    async with store.begin() as uow:
        await uow.trust_bundles.delete("FLEET-roots", if_match=v2.etag)
    async with store.read() as uow:
        assert await uow.trust_bundles.get("fleet-roots") is None


def _issued(reg: str, serial: str, at: dt.datetime, thumb: str) -> IssuedCertificate:
    return IssuedCertificate(
        sha256_thumbprint=thumb,
        sha1_thumbprint=thumb[:40],
        serial_number=serial,
        registration_id=reg,
        device_id=reg,
        issuer_name="factory-ca",
        issuer_kind="local",
        not_before=at,
        not_after=at + dt.timedelta(days=30),
        issued_at=at,
        enrollment="group:line-1",
        pem="-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )


async def test_issued_certificates_are_recorded_and_listed_newest_first(store: Store) -> None:
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    a1 = _issued("Dev-1", "0A", t0, "A" * 64)
    a2 = _issued("dev-1", "0B", t0 + dt.timedelta(hours=1), "B" * 64)
    other = _issued("dev-2", "0C", t0, "C" * 64)
    async with store.begin() as uow:
        for cert in (a1, a2, other):
            await uow.issued_certificates.add(cert)
    with pytest.raises(AlreadyExists):
        async with store.begin() as uow:
            await uow.issued_certificates.add(a1)
    async with store.read() as uow:
        mine = await uow.issued_certificates.list(registration_id="DEV-1")
        every = await uow.issued_certificates.list()
        one = await uow.issued_certificates.list(limit=1)
        got = await uow.issued_certificates.get("a" * 64)
    assert [c.serial_number for c in mine] == ["0B", "0A"]
    assert len(every) == 3 and [c.serial_number for c in one] == ["0B"]
    assert got == a1


async def test_registration_record_keeps_the_bundle_version_it_received(store: Store) -> None:
    record = RegistrationRecord(
        "dev-9", "assigned", "op-1", trust_bundle_id="fleet-roots", trust_bundle_version=3, issued_certificate="D" * 64
    )
    async with store.begin() as uow:
        await uow.registrations.put(record)
    async with store.read() as uow:
        got = await uow.registrations.get("dev-9")
    assert got is not None
    assert (got.trust_bundle_id, got.trust_bundle_version, got.issued_certificate) == ("fleet-roots", 3, "D" * 64)


async def test_registration_view_reads_the_issued_certificate(store: Store) -> None:
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    cert = _issued("dev-8", "0D", t0, "E" * 64)
    record = RegistrationRecord(
        "dev-8", "assigned", "op-1", trust_bundle_id="fleet-roots", trust_bundle_version=2, issued_certificate="E" * 64
    )
    gone = RegistrationRecord("dev-7", "assigned", "op-1", issued_certificate="F" * 64)
    async with store.begin() as uow:
        await uow.issued_certificates.add(cert)
        saved, saved_gone = await uow.registrations.put(record), await uow.registrations.put(gone)
    async with store.read() as uow:
        view = await registration_view(uow, saved)
        without = await registration_view(uow, saved_gone)
    doc = view.to_json()
    assert (doc["trustBundleId"], doc["trustBundleVersion"]) == ("fleet-roots", 2)
    assert doc["issuedCertificate"] == {
        "sha256Thumbprint": "E" * 64,
        "serialNumber": "0D",
        "notAfterUtc": format_time(cert.not_after),
        "certificateAuthorityName": cert.issuer_name,
    }
    # The issued certificate record is gone: the thumbprint the registration keeps, alone.
    assert without.to_json()["issuedCertificate"] == {"sha256Thumbprint": "F" * 64}
    assert "trustBundleId" not in without.to_json()


async def test_hub_identities_keep_issued_thumbprints_beside_their_credential(store: Store) -> None:
    """DeviceAuth.issued_thumbprints (issue 18) round-trips on every store, apart from the
    device's own keys and thumbprints, and a renewal (`with_issued`) replaces only them."""
    kept = DeviceAuth("sas", Secret("a2V5LWtleS1rZXkta2V5LTE2"), Secret("c2Vjb25kLWtleS0xNi1ieXRl")).with_issued(
        "A" * 64, "B" * 40
    )
    alone = DeviceAuth("selfSigned").with_issued("C" * 64, "D" * 40)
    own = DeviceAuth("selfSigned", primary_thumbprints=("E" * 64,)).with_issued("F" * 64)
    async with store.begin() as uow:
        for device_id, auth in (("kept-1", kept), ("alone-1", alone), ("own-1", own)):
            await uow.devices.put(DeviceIdentity("hub.example", device_id, auth))
    async with store.read() as uow:
        got = {d: await uow.devices.get("hub.example", d) for d in ("kept-1", "alone-1", "own-1")}
    assert {d: g.auth if g else None for d, g in got.items()} == {"kept-1": kept, "alone-1": alone, "own-1": own}
    renewed = own.with_issued("1" * 64, "2" * 40)
    async with store.begin() as uow:
        current = await uow.devices.get("hub.example", "own-1", for_update=True)
        assert current is not None
        await uow.devices.put(replace(current, auth=renewed), if_match=current.etag)
    async with store.read() as uow:
        again = await uow.devices.get("hub.example", "own-1")
    assert again is not None and again.auth.primary_thumbprints == ("E" * 64,)
    assert again.auth.issued_thumbprints == ("1" * 64, "2" * 40)


def test_sealing_binds_the_name_and_the_key() -> None:
    key = SealingKey.generate()
    sealed = key.seal(Secret("s3cret-value"), "ca-1")
    assert "s3cret" not in sealed and key.open(sealed, "ca-1").reveal() == "s3cret-value"
    from iotdps.errors import ConfigError

    with pytest.raises(ConfigError):
        key.open(sealed, "ca-2")  # copied to another CA's row
    with pytest.raises(ConfigError):
        SealingKey.generate().open(sealed, "ca-1")  # another service's key
    assert "s3cret" not in repr(key)
