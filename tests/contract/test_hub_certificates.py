"""Certificate renewal over the hub (provisioning.hub_certificates) on every store: what one
renewal writes in its transaction (the issued-certificate record marked `hub`, the device's hub
identity with the previous certificate as secondary, the registration record's pointer), and
what is refused before anything is written (no policy, a bad CSR, a device DPS did not place)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotdps.audit import Actor
from iotdps.enrollment.models import Attestation, EnrollmentGroup, EnrollmentSettings, SymmetricKeyAttestation
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.issuance.admin import put_issuing_ca
from iotdps.issuance.issuers import IssuerCache
from iotdps.issuance.sealing import SealingKey
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key
from iotdps.pki.csr_policy import IssuancePolicy
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.pki.keys import encode_private_key
from iotdps.ports import Store
from iotdps.provisioning.hub_certificates import HubCertificateRefused, HubCertificates
from iotdps.provisioning.records import RegistrationRecord
from iotdps.secret import Secret
from iotdps_testing.issuance import csr_b64, make_csr

HUB = "hub-1.example"
ACTOR = Actor("local", "contract")
K1, K2 = "c2VjcmV0LWtleS0xLTEyMzQ1Njc4OTA=", "c2VjcmV0LWtleS0yLTEyMzQ1Njc4OTA="


def _group(gid: str, policy: IssuancePolicy | None) -> EnrollmentGroup:
    att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(K1), Secret(K2)))
    return EnrollmentGroup(gid, att, EnrollmentSettings(issuance_policy=policy))


async def _world(store: Store) -> tuple[HubCertificates, Issuer]:
    key = generate_private_key()
    root = Issuer(create_root_ca("Hub Renewal Root", key, Validity.days(30)), key)
    sealing = SealingKey.generate()
    body = {
        "kind": "local",
        "caChain": [root.certificate.public_bytes(serialization.Encoding.PEM).decode()],
        "key": encode_private_key(root.key, Secret("pw-1")).decode(),
        "passphrase": "pw-1",
    }
    await put_issuing_ca(store, sealing, "factory-ca", body, actor=ACTOR)
    policy = IssuancePolicy.from_json({"certificateAuthorityName": "factory-ca", "validityInDays": 3})
    async with store.begin() as uow:
        await uow.groups.put(_group("issuing", policy))
        await uow.groups.put(_group("plain", None))
    return HubCertificates(store, IssuerCache(sealing)), root


async def _device(store: Store, rid: str, group: str, auth: DeviceAuth, *, hub: str = HUB) -> None:
    async with store.begin() as uow:
        await uow.registrations.put(
            RegistrationRecord(rid, "assigned", "op-1", assigned_hub=hub, device_id=rid, enrollment_group_id=group,
                               attestation_type="symmetricKey", issued_certificate=auth.issued_thumbprints[0]
                               if auth.issued_thumbprints else None)
        )  # fmt: skip
        await uow.devices.put(DeviceIdentity(hub, rid, auth, registration_id=rid))


async def test_renewal_records_the_certificate_and_moves_the_identity_in_one_go(store: Store) -> None:
    certificates, root = await _world(store)
    # Issued at registration (A/B), with the device's own key kept (keepExistingCredential).
    first = DeviceAuth("sas", primary_key=Secret(K1), secondary_key=Secret(K2)).with_issued("A" * 64, "B" * 40)
    await _device(store, "dev-1", "issuing", first)
    key = ec.generate_private_key(ec.SECP256R1())
    prepared = await certificates.prepare(HUB, "dev-1", csr_b64(make_csr("dev-1", key)))
    issued, bundle = await certificates.complete(prepared)
    assert bundle is None  # the group names no trust bundle, and no server CA rotation published one
    assert issued.root == root.certificate and issued.leaf.public_key() == key.public_key()
    async with store.read() as uow:
        device = await uow.devices.get(HUB, "dev-1")
        record = await uow.registrations.get("dev-1")
        listed = list(await uow.issued_certificates.list("dev-1"))
    assert device is not None and record is not None
    # The new certificate first, the previous one still accepted; the kept key untouched.
    new = (sha256_thumbprint(issued.leaf), sha1_thumbprint(issued.leaf))
    assert device.auth.issued_thumbprints == (*new, "A" * 64, "B" * 40)
    assert device.auth.type == "sas" and device.auth.primary_key is not None
    assert device.auth.primary_key.reveal() == K1
    assert record.issued_certificate == sha256_thumbprint(issued.leaf)
    assert [(c.serial_number, c.issued_via, c.enrollment, c.issuer_kind) for c in listed] == [
        (issued.serial_number, "hub", "group:issuing", "local")
    ]
    assert listed[0].not_after - listed[0].not_before <= dt.timedelta(days=3, minutes=10)
    # A second renewal: the first renewed certificate is the previous one now; A/B are dropped.
    again, _ = await certificates.complete(await certificates.prepare(HUB, "dev-1", csr_b64(make_csr("dev-1"))))
    async with store.read() as uow:
        device = await uow.devices.get(HUB, "dev-1")
        assert len(await uow.issued_certificates.list("dev-1")) == 2
    assert device is not None
    assert device.auth.issued_thumbprints == (sha256_thumbprint(again.leaf), sha1_thumbprint(again.leaf), *new)


async def test_refusals_write_nothing_but_the_refusal_log(store: Store) -> None:
    certificates, _ = await _world(store)
    sas = DeviceAuth("sas", primary_key=Secret(K1), secondary_key=Secret(K2))
    await _device(store, "plain-1", "plain", sas)
    await _device(store, "dev-2", "issuing", DeviceAuth("selfSigned").with_issued("D" * 64))
    await _device(store, "moved-1", "issuing", sas, hub="other-hub.example")
    cases = [
        ("plain-1", csr_b64(make_csr("plain-1")), 400, 400025),  # the enrollment has no issuance policy
        ("dev-2", csr_b64(make_csr("someone-else")), 400, 400022),  # CN is not the registration id
        ("dev-2", "bm90IGEgQ1NS", 400, 400020),  # not a CSR
        ("moved-1", csr_b64(make_csr("moved-1")), 404, 404001),  # DPS placed it on another hub
        ("nobody", csr_b64(make_csr("nobody")), 404, 404001),
    ]
    for device_id, csr, status, code in cases:
        with pytest.raises(HubCertificateRefused) as refused:
            await certificates.prepare(HUB, device_id, csr)
        assert (refused.value.status, refused.value.error_code) == (status, code), device_id
    async with store.read() as uow:
        assert list(await uow.issued_certificates.list()) == []
        device = await uow.devices.get(HUB, "dev-2")
        reasons = {r.reason for r in await uow.refusals.list("dev-2")} | {
            r.reason for r in await uow.refusals.list("plain-1")
        }
    assert device is not None and device.auth.issued_thumbprints == ("D" * 64,)
    assert {"CSR_NOT_EXPECTED", "CSR_CN_MISMATCH", "CSR_MALFORMED"} <= reasons


async def test_a_device_without_a_certificate_yet_gets_it_as_at_registration(store: Store) -> None:
    # An optional-CSR policy: the device registered with its key alone and asks over the hub.
    # Its policy does not keep the existing credential, so from now on the certificate alone opens
    # the hub, exactly as if it had sent the CSR at registration.
    certificates, _ = await _world(store)
    await _device(store, "sas-1", "issuing", DeviceAuth("sas", primary_key=Secret(K1), secondary_key=Secret(K2)))
    issued, _ = await certificates.complete(await certificates.prepare(HUB, "sas-1", csr_b64(make_csr("sas-1"))))
    async with store.read() as uow:
        device = await uow.devices.get(HUB, "sas-1")
    assert device is not None and device.auth.issued_only and device.auth.type == "selfSigned"
    assert device.auth.issued_thumbprints == (sha256_thumbprint(issued.leaf), sha1_thumbprint(issued.leaf))
