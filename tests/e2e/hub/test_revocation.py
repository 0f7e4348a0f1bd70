"""Revocation end to end: a real `Server` (wiring.node) with its own hub, devices of two
production lines provisioned with our device client over real TLS, then line 1's intermediate
revoked by the factory's CRL (made by the toolkit) while they are connected.

Line 1's devices are dropped from the hub within a second and refused at DPS (CERT_REVOKED in
the refusal log, the registration record shows it) and at hub CONNECT; line 2's stay connected.
Then one device of line 2 is revoked alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from iotdps.audit import Actor, AuditQuery
from iotdps.config import Config, DpsConfig, ManagementConfig
from iotdps.device import ConnectRefused, DeviceAgent, DeviceSettings, HubClient, ProvisioningFailed, X509Files
from iotdps.enrollment.models import Attestation, EnrollmentGroup, EnrollmentSettings, X509Attestation
from iotdps.errors import Unauthorized
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
from iotdps.pki.revocation import RevokedEntry, build_crl, crl_pem
from iotdps.provisioning.admin import put_group
from iotdps.provisioning.ca_admin import CaAdminService
from iotdps.wiring.node import Server
from iotdps_testing.net import free_loopback_address, free_port

TEST_ACTOR = Actor("local", "test")

pytestmark = pytest.mark.e2e


def _ca(name: str, parent: Issuer | None) -> Issuer:
    key = generate_private_key(KeySpec.P256)
    if parent is None:
        return Issuer(create_root_ca(name, key, Validity.days(30)), key, name=name)
    cert = create_intermediate_ca(parent, name, key.public_key(), Validity.days(20))
    return Issuer(cert, key, parent.chain, name=name)


def _device(tmp: Path, line: Issuer, rid: str) -> X509Files:
    key = generate_private_key(KeySpec.P256)
    cert = issue_device_certificate(line, rid, key.public_key(), Validity.days(10))
    cert_file, key_file = tmp / f"{rid}.pem", tmp / f"{rid}.key"
    cert_file.write_text("".join(certs.to_pem(c) for c in (cert, *line.bundle)))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return X509Files(cert_file, key_file)


def _crl(ca: Issuer, *revoked: int, number: int) -> str:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    entries = [RevokedEntry(serial, now, "keyCompromise") for serial in revoked]
    return crl_pem(build_crl(ca, entries, number=number, this_update=now, next_update=now + dt.timedelta(days=7)))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    dps = free_loopback_address()
    config = Config(
        data_dir=tmp_path / "data",
        dps=DpsConfig(host_name=dps, bind=dps),
        management=ManagementConfig(bind=dps, port=free_port(dps)),
    )
    server = Server(config)
    await server.start()
    yield server
    await server.stop()


async def _wait(predicate, timeout: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_revoked_line_is_dropped_from_the_hub_and_refused_at_dps(server: Server, tmp_path: Path) -> None:
    assert server.store is not None and server.hubs is not None
    root = _ca("root", None)
    factory = _ca("factory-a", root)
    line1, line2 = _ca("line-1", factory), _ca("line-2", factory)
    cas = CaAdminService(server.store, actor=TEST_ACTOR)
    await cas.upload_ca("root", certs.to_pem(root.certificate), verified=True)
    await cas.upload_ca("factory-a", certs.to_pem(factory.certificate))
    att = Attestation("x509", x509=X509Attestation(ca_references=("root", None)))
    await put_group(server.store, EnrollmentGroup("fleet", att, EnrollmentSettings()), actor=TEST_ACTOR)
    await server.reload_trust()
    ca_pem = server.config.data_dir.joinpath("tls", "server-ca.pem").read_text()
    dps = server.config.dps.host_name
    async with server.store.read() as uow:
        settings = await uow.settings.get()
    assert settings is not None

    def agent(rid: str, files: X509Files) -> DeviceAgent:
        return DeviceAgent(DeviceSettings(dps, settings.id_scope, rid, files, tmp_path / f"{rid}.json", ca_pem=ca_pem))

    files = {
        "l1-a": _device(tmp_path, line1, "l1-a"),
        "l1-b": _device(tmp_path, line1, "l1-b"),
        "l2-a": _device(tmp_path, line2, "l2-a"),
        "l2-b": _device(tmp_path, line2, "l2-b"),
    }
    agents = {rid: agent(rid, f) for rid, f in files.items() if rid != "l1-b"}
    clients = {rid: await a.start() for rid, a in agents.items()}
    hub = agents["l1-a"].assignment.assigned_hub  # type: ignore[union-attr]
    live = server.hubs.connections
    assert all(live.is_connected(hub, rid) for rid in clients)

    # The factory revokes line 1's intermediate; its CRL reaches the service (the API's
    # upload does the same and then reloads the trust, as here).
    await cas.upload_crl("factory-a", _crl(factory, line1.certificate.serial_number, number=1))
    started = time.monotonic()
    await server.reload_trust()
    took = await _wait(lambda: not live.is_connected(hub, "l1-a"), 1.0)
    assert time.monotonic() - started < 1.0, took
    assert live.is_connected(hub, "l2-a")
    await clients["l2-a"].send_telemetry("still here")

    # Line 1 at DPS: refused at the handshake's CONNECT, CERT_REVOKED for operators.
    with pytest.raises((ProvisioningFailed, Unauthorized, ConnectRefused)):
        await agent("l1-b", files["l1-b"]).start()
    async with server.store.read() as uow:
        refusals = list(await uow.refusals.list("l1-b"))
    assert refusals and refusals[0].reason == "CERT_REVOKED" and "CN=line-1" in refusals[0].message
    # A provisioned line-1 device trying DPS again: its record now shows the revocation.
    (tmp_path / "l1-a.json").unlink()
    with pytest.raises((ProvisioningFailed, Unauthorized, ConnectRefused)):
        await agent("l1-a", files["l1-a"]).start()
    async with server.store.read() as uow:
        record = await uow.registrations.get("l1-a")
    assert record is not None and record.status == "disabled" and record.error_message == "Certificate revoked"
    # And at the hub's CONNECT.
    direct = HubClient(hub, "l1-a", files["l1-a"], ca_pem=ca_pem)
    with pytest.raises(ConnectRefused) as refused:
        await direct.connect()
    assert refused.value.code == 5

    # One device of line 2 revoked alone: only it is dropped.
    serial = files["l2-b"].cert_file.read_text()
    from iotdps.pki.encoding import load_certificates

    device_serial = load_certificates(serial)[0].serial_number
    await cas.upload_ca("line-2", certs.to_pem(line2.certificate))
    await cas.upload_crl("line-2", _crl(line2, device_serial, number=1))
    await server.reload_trust()
    await _wait(lambda: not live.is_connected(hub, "l2-b"), 1.0)
    assert live.is_connected(hub, "l2-a")
    for a in agents.values():
        await a.stop()


async def test_the_crl_distribution_point_serves_each_held_crl_over_http(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from iotdps.config import CrlConfig
    from iotdps.pki.revocation import load_crl

    dps = free_loopback_address()
    port = free_port(dps)
    config = Config(
        data_dir=tmp_path / "data",
        dps=DpsConfig(host_name=dps, bind=dps),
        management=ManagementConfig(bind=dps, port=free_port(dps)),
        crl=CrlConfig(bind=dps, port=port),
    )
    server = Server(config)
    info = await server.start()
    try:
        assert any(f"http://{dps}:{port}/crl/" in e for e in info.endpoints)
        assert server.store is not None
        root = _ca("root", None)
        line = _ca("line-1", root)
        cas = CaAdminService(server.store, actor=TEST_ACTOR)
        await cas.upload_ca("root", certs.to_pem(root.certificate), verified=True)
        await cas.upload_crl("root", _crl(root, line.certificate.serial_number, number=3))
        async with server.store.read() as uow:  # the revocation is in the audit trail
            logged = await uow.audit.list(AuditQuery(action="ca.crl-upload"))
        assert [(e.target, e.actor, e.detail_doc()["crlNumber"]) for e in logged] == [("ca/root", "local:test", 3)]

        def get(path: str) -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(f"http://{dps}:{port}{path}", timeout=10) as answer:
                    return answer.status, answer.headers.get("Content-Type", ""), answer.read()
            except urllib.error.HTTPError as exc:
                return exc.code, "", b""

        status, kind, body = await asyncio.to_thread(get, "/crl/root.crl")
        assert status == 200 and kind == "application/pkix-crl"
        crl = load_crl(body)
        assert crl.is_signature_valid(root.certificate.public_key())  # type: ignore[arg-type]
        assert [r.serial_number for r in crl] == [line.certificate.serial_number]
        assert (await asyncio.to_thread(get, "/crl/nothing.crl"))[0] == 404
        assert (await asyncio.to_thread(get, "/certificates"))[0] == 404
    finally:
        await server.stop()
