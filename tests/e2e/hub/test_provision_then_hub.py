"""Provision through the real DPS endpoint (wiring.node), then work on the assigned hub.

The server runs in-process (`Server` from iotdps.wiring.node) with two hubs, each on its own
loopback address, and our Hubs routed in for hub CONNECTs. Devices are the unmodified
azure-iot-device 2.14.0 SDK and our own device client (iotdps.device).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import IoTHubDeviceClient, ProvisioningDeviceClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdps.audit import Actor
from iotdps.config import Config, DpsConfig, HubConfig, ManagementConfig
from iotdps.device import (
    ConnectRefused,
    DeviceAgent,
    DeviceSettings,
    HubClient,
    ProvisioningFailed,
    SymmetricKey,
    X509Files,
    load_state,
)
from iotdps.enrollment.cas import CaCertificate
from iotdps.enrollment.models import (
    Attestation,
    CertificateSlot,
    EnrollmentGroup,
    EnrollmentSettings,
    IndividualEnrollment,
    SymmetricKeyAttestation,
    X509Attestation,
)
from iotdps.errors import Unauthorized
from iotdps.pki import certs
from iotdps.pki.encoding import certificate_info
from iotdps.ports import HubStore, Store
from iotdps.protocols.mqtt.packets import Connect
from iotdps.provisioning.admin import put_enrollment, put_group
from iotdps.secret import Secret
from iotdps.server.mqtt_conn import MqttConnection, MqttEndpoint
from iotdps.wiring import node as server_app
from iotdps.wiring.hub import Hubs
from iotdps.wiring.node import Server
from iotdps_testing.net import free_loopback_address, free_port

TEST_ACTOR = Actor("local", "test")

pytestmark = pytest.mark.e2e
logging.getLogger("azure").setLevel(logging.WARNING)


class _LateHub:
    """The runtime needs the store the server opens in start(); route to it once it exists."""

    runtime: Hubs | None = None

    async def route(self, conn: MqttConnection, connect: Connect) -> MqttEndpoint | int:
        if self.runtime is None:
            return 3
        return await self.runtime.route(conn, connect)


@dataclass
class Stack:
    server: Server
    runtime: Hubs
    dps: str
    hubs: tuple[str, str]
    scope: str
    ca_pem: str

    @property
    def store(self) -> HubStore:
        assert self.server.store is not None
        return self.server.store  # type: ignore[return-value]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    dps = free_loopback_address()
    hubs = (free_loopback_address(), free_loopback_address())
    config = Config(
        data_dir=tmp_path / "data",
        dps=DpsConfig(host_name=dps, bind=dps),
        management=ManagementConfig(bind=dps, port=free_port(dps)),
        hubs=tuple(HubConfig(h, bind=h) for h in hubs),
    )
    late = _LateHub()
    server = Server(config, hub=late)
    info = await server.start()
    assert server.store is not None
    runtime = Hubs(server.store, hubs)
    await runtime.start()
    late.runtime = runtime
    yield Stack(server, runtime, dps, hubs, info.id_scope, info.server_ca.read_text())
    await runtime.stop()
    await server.stop()


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def test_sdk_provisions_then_uses_the_assigned_hub(stack: Stack) -> None:
    key = _key()
    att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(_key())))
    assert stack.server.store is not None
    await put_enrollment(stack.server.store, IndividualEnrollment("sdk-dev", att), actor=TEST_ACTOR)

    def provision() -> Any:
        client = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=stack.dps,
            registration_id="sdk-dev",
            id_scope=stack.scope,
            symmetric_key=key,
            server_verification_cert=stack.ca_pem,
        )
        return client.register()

    result = await asyncio.to_thread(provision)
    assert result.status == "assigned"
    hub, device_id = result.registration_state.assigned_hub, result.registration_state.device_id
    assert hub in stack.hubs and device_id == "sdk-dev"

    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=hub, device_id=device_id, server_verification_cert=stack.ca_pem
    )
    try:
        await asyncio.to_thread(client.connect)
        await asyncio.to_thread(client.send_message, "provisioned and connected")
        twin = await asyncio.to_thread(client.get_twin)
        assert twin["desired"]["$version"] >= 1
    finally:
        await asyncio.to_thread(client.shutdown)
    async with stack.store.begin() as uow:
        assert [m.body for m in await uow.telemetry.list(hub, device_id)] == [b"provisioned and connected"]


async def test_device_client_caches_the_assignment_and_reprovisions_when_refused(stack: Stack, tmp_path: Path) -> None:
    key = _key()
    att = Attestation("symmetricKey", symmetric_key=SymmetricKeyAttestation(Secret(key), Secret(_key())))
    assert stack.server.store is not None
    await put_enrollment(stack.server.store, IndividualEnrollment("own-dev", att), actor=TEST_ACTOR)
    settings = DeviceSettings(
        stack.dps, stack.scope, "own-dev", SymmetricKey(Secret(key)), tmp_path / "state.json", ca_pem=stack.ca_pem
    )
    c2d: asyncio.Queue[bytes] = asyncio.Queue()
    desired: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_method(name: str, payload: Any) -> tuple[int, Any]:
        return 200, {"method": name, "got": payload}

    def handlers() -> dict[str, Any]:
        return {"on_c2d": lambda m: c2d.put_nowait(m.body), "on_method": on_method, "on_desired": desired.put_nowait}

    first = DeviceAgent(settings, **handlers())
    client = await first.start()
    assert first.provisioned == 1 and first.assignment is not None
    hub = first.assignment.assigned_hub
    assert load_state(settings) == first.assignment
    assert oct((tmp_path / "state.json").stat().st_mode & 0o777) == "0o600"

    await client.send_telemetry('{"n": 1}', {"unit": "°C / s"}, message_id="m-1", content_type="application/json")
    twin = await client.get_twin()
    assert twin["reported"]["$version"] == 1
    assert await client.patch_reported({"fw": "2.0"}) == 2
    await stack.runtime.cloud.update_desired(hub, "own-dev", {"rate": 10})
    assert (await asyncio.wait_for(desired.get(), 5))["rate"] == 10
    assert await stack.runtime.cloud.invoke_method(hub, "own-dev", "blink", [1, 2], 5) == (
        200,
        {"method": "blink", "got": [1, 2]},
    )
    await stack.runtime.cloud.send_c2d(hub, "own-dev", b"to the device", {}, 30)
    assert await asyncio.wait_for(c2d.get(), 5) == b"to the device"
    await first.stop()
    async with stack.store.begin() as uow:
        (stored,) = await uow.telemetry.list(hub, "own-dev")
    assert stored.application_properties == {"unit": "°C / s"}
    assert stored.system_properties["connection_device_id"] == "own-dev"  # stamped by the hub
    assert {k: v for k, v in stored.system_properties.items() if not k.startswith("connection_")} == {
        "message_id": "m-1",
        "content_type": "application/json",
    }

    # Second start: straight to the cached hub, the provisioning service is not contacted.
    second = DeviceAgent(settings, **handlers())
    await second.start()
    assert second.provisioned == 0
    await second.stop()

    # The hub no longer knows the device: CONNACK 5, so the agent provisions again.
    async with stack.store.begin() as uow:
        await uow.devices.delete(hub, "own-dev")
        await uow.registrations.delete("own-dev")
    third = DeviceAgent(settings, **handlers())
    client = await third.start()
    assert third.provisioned == 1 and client.connected
    await third.stop()


# -- seed 000/001: the compromised intermediate ------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _issue(cn: str, issuer: Issued | None, *, ca: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if ca:
        # The chain policy wants keyCertSign on every CA below a trust anchor (RFC 5280 4.2.1.3).
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return Issued(builder.sign((issuer or Issued(None, key)).key, hashes.SHA256()), key)  # type: ignore[arg-type]


def _files(directory: Path, device: Issued, intermediate: Issued) -> X509Files:
    name = certs.common_name(device.cert)
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_text(device.pem + intermediate.pem)
    key_file.write_bytes(
        device.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return X509Files(cert_file, key_file)


def _group(gid: str, signing: Issued, status: str = "enabled") -> EnrollmentGroup:
    x = X509Attestation(signing_certificates=(CertificateSlot(signing.pem), None))
    return EnrollmentGroup(gid, Attestation("x509", x509=x), EnrollmentSettings(provisioning_status=status))  # type: ignore[arg-type]


async def test_disabled_intermediate_blocks_new_devices_not_provisioned_ones(stack: Stack, tmp_path: Path) -> None:
    root = _issue("Factory Root", None, ca=True)
    inter_a = _issue("Factory A", root, ca=True)
    old_dev, new_dev = _issue("line-a-1", inter_a, ca=False), _issue("line-a-2", inter_a, ca=False)
    store = stack.server.store
    assert store is not None
    async with store.begin() as uow:
        await uow.cas.put(CaCertificate("root", root.pem, certificate_info(root.cert), is_verified=True))
    await put_group(store, _group("factory-a", inter_a), actor=TEST_ACTOR)
    await stack.server.reload_trust()

    old_files = _files(tmp_path, old_dev, inter_a)
    settings = DeviceSettings(stack.dps, stack.scope, "line-a-1", old_files, tmp_path / "a1.json", ca_pem=stack.ca_pem)
    agent = DeviceAgent(settings)
    client = await agent.start()
    assert agent.provisioned == 1 and agent.assignment is not None
    hub = agent.assignment.assigned_hub
    await client.send_telemetry("before")
    await agent.stop()

    # The intermediate is compromised: its group is disabled at the provisioning service.
    await put_group(store, _group("factory-a", inter_a, status="disabled"), actor=TEST_ACTOR)

    again = DeviceAgent(settings)
    client = await again.start()
    assert again.provisioned == 0  # it keeps connecting to its hub, from the cache
    await client.send_telemetry("after")
    await again.stop()
    async with stack.store.begin() as uow:
        assert [m.body for m in await uow.telemetry.list(hub, "line-a-1")] == [b"before", b"after"]

    new_settings = DeviceSettings(
        stack.dps,
        stack.scope,
        "line-a-2",
        _files(tmp_path, new_dev, inter_a),
        tmp_path / "a2.json",
        ca_pem=stack.ca_pem,
    )
    with pytest.raises((ProvisioningFailed, Unauthorized)):
        await DeviceAgent(new_settings).start()
    assert load_state(new_settings) is None

    # A device disabled on the hub is refused at CONNECT.
    async with store.begin() as uow:
        device = await uow.devices.get(hub, "line-a-1")
        assert device is not None
        from dataclasses import replace

        await uow.devices.put(replace(device, status="disabled"))
    direct = HubClient(hub, "line-a-1", old_files, ca_pem=stack.ca_pem)
    with pytest.raises(ConnectRefused) as refused:
        await direct.connect()
    assert refused.value.code == 5


async def test_devices_refused_by_old_anchors_share_one_trust_reload(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA verified by another process a moment ago: the TLS anchors are older, so each of
    ten devices arriving together fails OpenSSL's check and asks for a reload. One store read
    answers them all (before: each waited 0.2 s for its own, the last ~2 s)."""
    server = stack.server
    assert server.service is not None and server.store is not None
    root = _issue("Late Root", None, ca=True)
    async with server.store.begin() as uow:
        await uow.cas.put(CaCertificate("late-root", root.pem, certificate_info(root.cert), is_verified=True))
    handshakes_failed = time.monotonic()
    reads = 0
    real = server_app.trust_anchors

    async def counted(store: Store) -> list[x509.Certificate]:
        nonlocal reads
        reads += 1
        return await real(store)

    monkeypatch.setattr(server_app, "trust_anchors", counted)
    answers = await asyncio.gather(*(server.reload_trust(on_demand=True, since=handshakes_failed) for _ in range(10)))
    assert reads == 1
    assert all(root.cert in anchors for anchors in answers)


# -- issue 17: an X.509 individual enrollment with a deviceId override ------------------------


async def test_x509_enrollment_with_device_id_override_connects_to_its_hub(stack: Stack, tmp_path: Path) -> None:
    """Azure registers a DPS-provisioned X.509 device on the hub by thumbprint (selfSigned), so
    a device whose enrollment names another device id connects although its CN is the
    registration id."""
    from iotdps_testing.devcerts import self_signed_device

    dev = self_signed_device(tmp_path, "override-reg")
    slot = CertificateSlot(dev.cert.public_bytes(serialization.Encoding.PEM).decode())
    att = Attestation("x509", x509=X509Attestation(client_certificates=(slot, None)))
    assert stack.server.store is not None
    override = IndividualEnrollment("override-reg", att, device_id="renamed-device")
    await put_enrollment(stack.server.store, override, actor=TEST_ACTOR)
    await stack.server.reload_trust()

    def provision() -> Any:
        from azure.iot.device import X509

        client = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=stack.dps,
            registration_id="override-reg",
            id_scope=stack.scope,
            x509=X509(str(dev.cert_file), str(dev.key_file)),
            server_verification_cert=stack.ca_pem,
        )
        return client.register()

    result = await asyncio.to_thread(provision)
    assert result.status == "assigned"
    hub, device_id = result.registration_state.assigned_hub, result.registration_state.device_id
    assert device_id == "renamed-device"

    from azure.iot.device import X509

    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(str(dev.cert_file), str(dev.key_file)),
        hostname=hub,
        device_id=device_id,
        server_verification_cert=stack.ca_pem,
    )
    try:
        await asyncio.to_thread(client.connect)
        await asyncio.to_thread(client.send_message, "renamed and connected")
    finally:
        await asyncio.to_thread(client.shutdown)
    async with stack.store.begin() as uow:
        assert [m.body for m in await uow.telemetry.list(hub, device_id)] == [b"renamed and connected"]

    # The thumbprint is what identifies it: another certificate with the same CN is refused.
    (tmp_path / "other").mkdir()
    other = self_signed_device(tmp_path / "other", "override-reg")
    direct = HubClient(hub, device_id, X509Files(other.cert_file, other.key_file), ca_pem=stack.ca_pem)
    with pytest.raises(ConnectRefused) as refused:
        await direct.connect()
    assert refused.value.code == 5
