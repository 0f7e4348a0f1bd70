"""Issue 20 end to end: CA keys in a real SoftHSM2 token, a factory that never sees the root key,
and the official azure-iot-device SDK provisioning the devices they mint against `iotdps up`.

The CA commands run as child processes with the token's environment (token_cli.py says why);
the service's own commands (upload, verify, groups) run in-process as elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient

from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.token_cli import TokenCli, start_token_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HUB = "hub-hsm.iotdps.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    address = free_loopback_address()
    running = start_server(
        tmp_path_factory.mktemp("dps-hsm"),
        address=address,
        config=f'[[hubs]]\nhost_name = "{HUB}"\nbind = "{address}"\n',
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def root_site(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    """The root's offline machine: root and one line CA, both keys made inside its token; the
    root proven to the service with a verification certificate the token signed."""
    tc = start_token_cli(tmp_path_factory.mktemp("root-site"), label="root-hsm", user_pin="root-hsm-pin-1")
    tc.ok("create-ca-root", "--path-length", "1", "--pkcs11-uri", "pkcs11:object=root")
    tc.ok("create-ca-intermediate", "--name", "hsm-line", "--parent", "root", "--pkcs11-uri", "pkcs11:object=hsm-line")
    server.cli("ca", "upload", "root", str(tc.ca_dir / "root.cert.pem"))
    code = _verification_code(server.cli("ca", "verification-code", "root"))
    tc.ok("proof-ca-root-possession", "--ca", "root", "--verification-code", code, "--out", "verification.pem")
    server.cli("ca", "verify", "root", str(tc.cwd / "verification.pem"))
    return tc


def _verification_code(output: str) -> str:
    for token in output.replace(":", " ").split():
        if len(token) >= 32 and token.isalnum() and token.upper() == token:
            return token
    raise AssertionError(f"no verification code in {output!r}")


def _register(server: RunningServer, registration_id: str, directory: Path) -> str:
    cert = X509(str(directory / f"{registration_id}.cert.pem"), str(directory / f"{registration_id}.key.pem"))
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        x509=cert,
        server_verification_cert=server.server_ca,
    )
    result = client.register()
    assert result.status == "assigned", result
    assert result.registration_state.assigned_hub == HUB
    return str(result.registration_state.device_id)


def test_device_minted_by_a_token_held_intermediate_provisions(server: RunningServer, root_site: TokenCli) -> None:
    server.cli("group", "create", "hsm-line", "--signing-cert", str(root_site.ca_dir / "hsm-line.cert.pem"))
    root_site.ok("create-device-cert", "--ca", "hsm-line", "-r", "hsm-e2e-1", "--out", "devices")
    assert _register(server, "hsm-e2e-1", root_site.cwd / "devices") == "hsm-e2e-1"
    record = server.registration("hsm-e2e-1")
    assert record is not None and record.status == "assigned"


def test_factory_dir_from_a_csr_mints_devices_that_provision(
    server: RunningServer, root_site: TokenCli, tmp_path: Path
) -> None:
    """Seed 001 with the root kept offline: the factory makes its key and CSR, the root signs it
    and exports a directory with no key at all; the factory attaches its own key and mints."""
    factory = start_token_cli(tmp_path / "factory-site", label="factory-c-hsm", user_pin="factory-c-pin-7")
    factory.passphrase = "factory-c-own-passphrase"
    factory.ok("create-ca-csr", "--name", "factory-c")
    assert (factory.cwd / "factory-c.key.pem").exists()  # the factory's key, at the factory

    root_site.ok(
        "create-ca-intermediate", "--name", "factory-c", "--parent", "root", "--csr", str(factory.cwd / "factory-c.csr")
    )
    export = tmp_path / "factory-c-ca"
    root_site.ok("ca-dir", "export", "factory-c", "--out", str(export))
    assert not list(export.glob("*.key.pem"))  # nothing of the root's, and the root never had the factory's

    factory.ca_dir = export
    factory.ok("ca-dir", "attach-key", "factory-c", "--key", str(factory.cwd / "factory-c.key.pem"))
    assert sorted(p.name for p in export.glob("*.key.pem")) == ["factory-c.key.pem"]  # no key but its own
    server.cli("group", "create", "factory-c", "--signing-cert", str(export / "factory-c.cert.pem"))
    factory.ok("create-device-cert", "--count", "3", "--id-prefix", "fc-", "--out", "batch", "--workers", "1")
    for rid in ("fc-000001", "fc-000003"):
        assert _register(server, rid, factory.cwd / "batch") == rid
