"""Rotating the server's own CA, walked end to end against a real `iotdps up` (issue 18).

Two devices of one symmetric-key group register while the first server CA is presented:
A with our device client (api-version 2025-07-01-preview, a CSR: answers carry a trust
bundle, which it adds to its root store), B with the unmodified azure-iot-device SDK
(2019-03-31: no bundle ever reaches it; its CA file holds the first CA only).

`iotdps tls rotate` makes a new CA and publishes both in the built-in bundle; the server still
presents the old chain. A re-registers and receives the bundle; `iotdps tls rotation status`
then lists B only, and `activate` is refused for B's sake until --force. After activation the
running server presents the new chain without a restart: A reconnects to its hub and
registers again; B is refused at the handshake. `retire` leaves the new CA alone in the bundle.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError
from cryptography import x509

from iotdps.device import DeviceAgent, DeviceSettings, SymmetricKey
from iotdps.device.issued import IssuedFiles
from iotdps.sas import derive_device_key
from iotdps.secret import Secret
from iotdps_testing.server import SRC, RunningServer, start_server

pytestmark = pytest.mark.e2e

BUILTIN = "iotdps-server-ca"


@pytest.fixture(scope="module")
def dps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("ca-rotation")
    server = start_server(tmp)
    server.env.update({"IOTDPS_CA_DIR": str(tmp / "ca"), "IOTDPS_CA_PASSPHRASE": "toolkit-pass-1"})
    try:
        server.cli("create-ca-root", "--name", "fleet-root")
        server.cli("issuing-ca", "add-local", "factory-ca", "--ca", "fleet-root")
        # No --trust-bundle: its devices get the built-in one once a rotation publishes it.
        server.cli("group", "create", "rotating", "--symmetric-key", "--issuing-ca", "factory-ca", "--csr", "optional")
        yield server
    finally:
        server.stop()


def _iotdps(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, for exit codes and the `error:` line."""
    env = {**os.environ, "PYTHONPATH": str(SRC), **server.env}
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def _presented(server: RunningServer, ca_pem: str) -> x509.Certificate:
    """The leaf the DPS MQTT port presents to a client trusting `ca_pem` only (raises when the
    handshake fails, as a device's would)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    with (
        socket.create_connection((server.address, 8883), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server.address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _status(server: RunningServer) -> dict[str, Any]:
    result = _iotdps(server, "tls", "rotation", "status", "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _unreached(server: RunningServer) -> list[str]:
    return [d["registrationId"] for d in _status(server)["devicesWithoutNewCa"]]


def _sdk_register(server: RunningServer, rid: str, key: str, ca_pem: str) -> Any:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=rid,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=ca_pem,
    )
    return client.register()


def test_rotation_walked_through(dps: RunningServer, tmp_path: Path) -> None:
    group_key = dps.symmetric_keys("group", "rotating")[0]
    old_ca_pem = dps.server_ca
    old_ca = x509.load_pem_x509_certificate(old_ca_pem.encode())
    assert _presented(dps, old_ca_pem).issuer == old_ca.subject

    settings_a = DeviceSettings(
        dps.address,
        dps.id_scope,
        "rot-a",
        SymmetricKey(Secret(derive_device_key(group_key, "rot-a"))),
        tmp_path / "a" / "state.json",
        ca_pem=old_ca_pem,
        issue_certificate=True,
    )
    files_a = IssuedFiles(settings_a.state_file)

    async def start_a() -> DeviceAgent:
        agent = DeviceAgent(settings_a)
        client = await agent.start()
        await client.send_telemetry('{"n": 1}', {})
        return agent

    async def renew_and_stop(agent: DeviceAgent) -> None:
        await agent.renew()
        await agent.stop()

    asyncio.run(_run_stop(start_a))  # the first registration
    assert files_a.bundle_pem() is None  # no rotation yet: no built-in bundle to send
    b_key = derive_device_key(group_key, "rot-b")
    assert _sdk_register(dps, "rot-b", b_key, old_ca_pem).status == "assigned"
    assert _status(dps)["phase"] == "none"

    # Rotate: a new CA beside the old; nothing presented changes.
    out = dps.cli("tls", "rotate")
    assert "new server CA" in out and f"{BUILTIN} version 1 carries both" in out
    status = _status(dps)
    assert status["phase"] == "pending"
    assert _unreached(dps) == ["rot-a", "rot-b"]
    assert _presented(dps, old_ca_pem).issuer == old_ca.subject
    bundle = dps.cli_json("trust-bundle", "show", BUILTIN)
    new_ca_pem = bundle["certificates"][1]["certificate"].replace("\r\n", "\n")
    new_ca = x509.load_pem_x509_certificate(new_ca_pem.encode())
    assert bundle["version"] == 1 and len(bundle["certificates"]) == 2
    assert (dps.data_dir / "tls" / "ca-bundle.pem").read_text().count("BEGIN CERTIFICATE") == 2

    # A registers again: its answer carries the bundle with both CAs, and the record says so.
    async def renew_a() -> None:
        agent = DeviceAgent(settings_a)
        await agent.start()
        await renew_and_stop(agent)

    asyncio.run(renew_a())
    assert files_a.bundle_pem() is not None and new_ca_pem.strip() in files_a.bundle_pem()  # type: ignore[operator]
    record = dps.registration("rot-a")
    assert (record.trust_bundle_id, record.trust_bundle_version) == (BUILTIN, 1)
    assert _unreached(dps) == ["rot-b"]

    # Activation would strand B: refused in words, exit 2, until --force.
    refused = _iotdps(dps, "tls", "activate")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: activation would strand 1 device(s) that have not received the new CA "
        "(iotdps tls rotation status lists them); re-register them first, or pass --force"
    ]
    assert _presented(dps, old_ca_pem).issuer == old_ca.subject
    dps.cli("tls", "activate", "--force")

    # The running server follows within seconds, without a restart.
    deadline = time.monotonic() + 20
    while True:
        try:
            leaf = _presented(dps, new_ca_pem)
            break
        except ssl.SSLCertVerificationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert leaf.issuer == new_ca.subject
    assert dps.process.poll() is None
    assert "server certificate reloaded" in dps.log()
    assert _status(dps)["phase"] == "activated" and _unreached(dps) == ["rot-b"]

    # A reconnects to its hub (cached assignment) and registers again, through the new chain.
    async def a_after() -> int:
        agent = DeviceAgent(settings_a)
        client = await agent.start()
        provisioned = agent.provisioned
        await client.send_telemetry('{"n": 2}', {})
        await renew_and_stop(agent)
        return provisioned

    assert asyncio.run(a_after()) == 0

    # B never learnt the new CA: refused at the handshake, by DPS and by the hub port alike.
    with pytest.raises(ssl.SSLCertVerificationError):
        _presented(dps, old_ca_pem)
    with pytest.raises(ClientError) as refused_b:
        _sdk_register(dps, "rot-b", b_key, old_ca_pem)
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _causes(refused_b.value)), refused_b.value

    # Retire: the bundle's next version carries the new CA only.
    dps.cli("tls", "retire")
    bundle = dps.cli_json("trust-bundle", "show", BUILTIN)
    assert bundle["version"] == 2 and len(bundle["certificates"]) == 1
    assert _status(dps)["phase"] == "none"


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and every one it was raised from (the SDK wraps the TLS failure)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


async def _run_stop(start: Any) -> None:
    agent = await start()
    await agent.stop()


def test_the_builtin_bundle_cannot_be_changed_by_hand(dps: RunningServer, tmp_path: Path) -> None:
    for args in (
        ("trust-bundle", "delete", BUILTIN),
        ("trust-bundle", "set", BUILTIN, "--cert", str(dps.server_ca_path)),
    ):
        result = _iotdps(dps, *args)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: trust bundle '{BUILTIN}' holds the server's own CAs"), result.stderr
