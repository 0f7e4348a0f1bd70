"""Registration records show a revocation as soon as the CRL is held (issue 20), on every store.

A factory made with the CA toolkit: root -> factory-a -> line-1 / line-2, devices of both lines
registered through the provisioning service (the path they were admitted under is kept on the
record, in the store's document). Then CRLs are uploaded as operators do (`CaAdminService`,
behind `iotdps crl upload` and PUT /certificates/{name}/crl) and the records are read back as
`iotdps registration show|list` and the API read them (`provisioning.record_view`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from iotdps.allocation.hubs import LinkedHub
from iotdps.attestation.x509 import evidence_from_chain
from iotdps.audit import Actor
from iotdps.enrollment.models import Attestation, EnrollmentGroup, EnrollmentSettings, X509Attestation
from iotdps.issuance.models import IssuedCertificate, IssuingCa
from iotdps.pki import (
    Issuer,
    KeySpec,
    Validity,
    certs,
    create_intermediate_ca,
    create_root_ca,
    generate_private_key,
    issue_device_certificate,
)
from iotdps.pki.encoding import sha1_thumbprint, sha256_thumbprint
from iotdps.pki.revocation import RevokedEntry, build_crl, crl_pem
from iotdps.ports import Store
from iotdps.provisioning.admin import put_group
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.provisioning.record_view import RegistrationView, registration_view, registration_views
from iotdps.provisioning.records import RegistrationRecord
from iotdps.provisioning.registration import RegistrationRequest
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.provisioning.trust import trust_anchors
from iotdps.timestamps import format_time

ACTOR = Actor("local", "test")
SCOPE = "0ne00REVOKE"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ca(name: str, parent: Issuer | None) -> Issuer:
    key = generate_private_key(KeySpec.P256)
    if parent is None:
        return Issuer(create_root_ca(name, key, Validity.days(30)), key, name=name)
    cert = create_intermediate_ca(parent, name, key.public_key(), Validity.days(20))
    return Issuer(cert, key, parent.chain, name=name)


def _device(line: Issuer, rid: str) -> list[x509.Certificate]:
    """The chain a device presents: its certificate and the CAs above it but the root."""
    key = generate_private_key(KeySpec.P256)
    return [issue_device_certificate(line, rid, key.public_key(), Validity.days(10)), *line.bundle]


def _crl(ca: Issuer, *serials: int, number: int = 1, reason: str = "keyCompromise") -> str:
    """A CRL signed by `ca` with the toolkit (what `iotdps revoke` writes)."""
    at = NOW - dt.timedelta(minutes=5)
    entries = [RevokedEntry(s, at, reason) for s in serials]
    return crl_pem(build_crl(ca, entries, number=number, this_update=at, next_update=NOW + dt.timedelta(days=7)))


def _external_crl(ca: Issuer, serial: int) -> str:
    """A manufacturer's own CRL, built with cryptography's builder rather than the toolkit."""
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(NOW - dt.timedelta(hours=2))
        .add_extension(x509.CRLReason(x509.ReasonFlags.superseded), critical=False)
        .build()
    )
    assert ca.private_key is not None
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .add_extension(x509.CRLNumber(42), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return crl_pem(crl)


@dataclass
class Factory:
    root: Issuer
    factory: Issuer
    line1: Issuer
    line2: Issuer
    acme: Issuer
    chains: dict[str, list[x509.Certificate]]


@pytest.fixture(scope="module")
def pki() -> Factory:
    root = _ca("root", None)
    factory = _ca("factory-a", root)
    line1, line2 = _ca("line-1", factory), _ca("line-2", factory)
    acme = _ca("acme-root", None)  # a manufacturer's own PKI, uploaded with its CRL
    chains = {
        "l1-a": _device(line1, "l1-a"),
        "l1-b": _device(line1, "l1-b"),
        "l2-a": _device(line2, "l2-a"),
        "l2-b": _device(line2, "l2-b"),
        "acme-1": _device(acme, "acme-1"),
        "acme-2": _device(acme, "acme-2"),
    }
    return Factory(root, factory, line1, line2, acme, chains)


async def _world(store: Store, pki: Factory) -> CaAdminService:
    async with store.begin() as uow:
        await uow.settings.put(ServiceSettings(SCOPE))
        await uow.hubs.put(LinkedHub("hub-1.example"))
    cas = CaAdminService(store, actor=ACTOR)
    await cas.upload_ca("root", certs.to_pem(pki.root.certificate), verified=True)
    for ca in (pki.factory, pki.line1, pki.line2):  # uploaded so that their CRLs can be held
        await cas.upload_ca(str(ca.name), certs.to_pem(ca.certificate))
    await cas.upload_ca("acme-root", certs.to_pem(pki.acme.certificate), verified=True)
    for name, ref in (("fleet", "root"), ("acme", "acme-root")):
        att = Attestation("x509", x509=X509Attestation(ca_references=(ref, None)))
        await put_group(store, EnrollmentGroup(name, att, EnrollmentSettings()), actor=ACTOR)
    service = ProvisioningService(store)
    anchors = await trust_anchors(store)
    for rid, chain in pki.chains.items():
        outcome = await service.register(RegistrationRequest(SCOPE, rid, evidence_from_chain(chain, anchors, NOW)))
        assert outcome.record is not None and outcome.record.status == "assigned", outcome.message
    return cas


async def _views(store: Store) -> dict[str, RegistrationView]:
    async with store.read() as uow:
        page = await uow.registrations.list(100, None)
        return {v.record.registration_id: v for v in await registration_views(uow, page.items)}


async def test_the_admitted_path_is_kept_on_the_record(store: Store, pki: Factory) -> None:
    await _world(store, pki)
    async with store.read() as uow:
        record = await uow.registrations.get("l1-a")
    assert record is not None and len(record.x509_path) == 4  # leaf, line-1, factory-a, root
    views = await _views(store)
    assert all(v.revocation is None and "revocation" not in v.to_json() for v in views.values())
    # The device's own answer (registrationState) never carries it.
    assert "x509Path" not in record.to_json() and "revocation" not in record.to_json()


async def test_revoking_line_1_shows_on_its_records_and_not_on_line_2s(store: Store, pki: Factory) -> None:
    cas = await _world(store, pki)
    await cas.upload_crl("factory-a", _crl(pki.factory, pki.line1.certificate.serial_number))
    views = await _views(store)
    for rid in ("l1-a", "l1-b"):
        doc = views[rid].to_json()["revocation"]
        assert doc == {
            "revoked": True,
            "reason": "keyCompromise",
            "revokedAt": format_time(NOW - dt.timedelta(minutes=5)),
            "by": "ca:line-1",
            "certificate": "attestation",
        }
        # Shown without any registration attempt: the record itself is as it was.
        assert views[rid].record.status == "assigned"
    for rid in ("l2-a", "l2-b", "acme-1", "acme-2"):
        assert views[rid].revocation is None, rid


async def test_revoking_one_device_by_serial_shows_on_its_record_only(store: Store, pki: Factory) -> None:
    cas = await _world(store, pki)
    serial = pki.chains["l2-a"][0].serial_number
    await cas.upload_crl("line-2", _crl(pki.line2, serial, reason="cessationOfOperation"))
    views = await _views(store)
    revoked = {rid for rid, v in views.items() if v.revocation is not None}
    assert revoked == {"l2-a"}
    assert views["l2-a"].to_json()["revocation"]["by"] == "leaf"
    assert views["l2-a"].to_json()["revocation"]["reason"] == "cessationOfOperation"
    async with store.read() as uow:  # GET /registrations/{id} and `registration show` read one
        record = await uow.registrations.get("l2-a")
        assert record is not None
        one = await registration_view(uow, record)
    assert one.revocation == views["l2-a"].revocation


async def test_an_uploaded_external_crl_shows_the_same_way(store: Store, pki: Factory) -> None:
    cas = await _world(store, pki)
    await cas.upload_crl("acme-root", _external_crl(pki.acme, pki.chains["acme-2"][0].serial_number))
    views = await _views(store)
    assert {rid for rid, v in views.items() if v.revocation is not None} == {"acme-2"}
    doc = views["acme-2"].to_json()["revocation"]
    assert doc["by"] == "leaf" and doc["reason"] == "superseded"


async def test_a_revoked_ca_above_the_anchor_names_that_ca(store: Store, pki: Factory) -> None:
    # The root revokes factory-a: every device of both lines is under it.
    cas = await _world(store, pki)
    await cas.upload_crl("root", _crl(pki.root, pki.factory.certificate.serial_number, reason="cACompromise"))
    views = await _views(store)
    for rid in ("l1-a", "l1-b", "l2-a", "l2-b"):
        assert views[rid].to_json()["revocation"]["by"] == "ca:factory-a", rid
    assert views["acme-1"].revocation is None


async def test_a_revoked_issued_certificate_shows_on_the_record(store: Store, pki: Factory) -> None:
    """The certificate issued at registration (issue 18), by an issuing CA that is also uploaded
    (so that its CRL is held): revoked, the record says so ("certificate": "issued")."""
    cas = await _world(store, pki)
    key = generate_private_key(KeySpec.P256)
    issued = issue_device_certificate(pki.line2, "sas-1", key.public_key(), Validity.days(5))
    other = issue_device_certificate(pki.line2, "sas-2", key.public_key(), Validity.days(5))
    async with store.begin() as uow:
        await uow.issuing_cas.put(
            IssuingCa("line-2-issuer", "pkcs11", tuple(pki.line2.chain), "", pkcs11_uri="pkcs11:token=t;object=o")
        )
        for rid, cert in (("sas-1", issued), ("sas-2", other)):
            await uow.issued_certificates.add(
                IssuedCertificate(
                    sha256_thumbprint(cert),
                    sha1_thumbprint(cert),
                    f"{cert.serial_number:X}",
                    rid,
                    rid,
                    "line-2-issuer",
                    "pkcs11",
                    cert.not_valid_before_utc,
                    cert.not_valid_after_utc,
                    NOW,
                    "group:sas",
                    certs.to_pem(cert),
                )
            )
            await uow.registrations.put(
                RegistrationRecord(
                    rid, "assigned", "op-1", attestation_type="symmetricKey", issued_certificate=sha256_thumbprint(cert)
                )
            )
    await cas.upload_crl("line-2", _crl(pki.line2, issued.serial_number))
    views = await _views(store)
    assert views["sas-1"].to_json()["revocation"]["certificate"] == "issued"
    assert views["sas-1"].to_json()["revocation"]["by"] == "leaf"
    assert views["sas-2"].revocation is None
    # Line-2's intermediate revoked by the factory: the issued certificates are under it.
    await cas.upload_crl("factory-a", _crl(pki.factory, pki.line2.certificate.serial_number))
    views = await _views(store)
    assert views["sas-2"].to_json()["revocation"]["by"] == "ca:line-2"
