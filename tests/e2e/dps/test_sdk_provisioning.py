"""The official azure-iot-device 2.14.0 SDK, unmodified, against a real `iotdps up`.

Each test registers through the SDK (MQTT over TLS, or websockets) and checks both what the
device sees and what the operator sees (the registration record, the refusal log).
The certificates come from our own factory CLI, as in seed 001.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from iotdps.sas import make_sas_token
from iotdps_testing.devcerts import derived_key, self_signed_device
from iotdps_testing.rawdps import dps_connect
from iotdps_testing.server import RunningServer, start_server

pytestmark = pytest.mark.e2e

HUB_A = "hub-a.iotdps.test"
HUB_B = "hub-b.iotdps.test"
PASSPHRASE = "factory-passphrase-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("dps")
    # Both hubs are served on the DPS address; provisioning only names them here.
    placeholder = "ADDRESS"
    config = (
        f'[[hubs]]\nhost_name = "{HUB_A}"\nbind = "{placeholder}"\n'
        f'[[hubs]]\nhost_name = "{HUB_B}"\nbind = "{placeholder}"\nweight = 3\n'
    )
    from iotdps_testing.net import free_loopback_address

    address = free_loopback_address()
    running = start_server(tmp, address=address, config=config.replace(placeholder, address))
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def factory(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Seed 001's factory side: root (proven to the service), intermediates A and B."""
    ca_dir = tmp_path_factory.mktemp("ca")
    server.env.update({"IOTDPS_CA_DIR": str(ca_dir), "IOTDPS_CA_PASSPHRASE": PASSPHRASE})
    server.cli("create-ca-root", "--name", "root")
    server.cli("create-ca-intermediate", "--name", "factory-a", "--parent", "root")
    server.cli("create-ca-intermediate", "--name", "factory-b", "--parent", "root")
    root = ca_dir / "root.cert.pem"
    # Proof of possession of the root, the offline half and the service half.
    server.cli("ca", "upload", "root", str(root))
    code = _verification_code(server.cli("ca", "verification-code", "root"))
    verification = ca_dir / "verification.pem"
    server.cli("proof-ca-root-possession", "--ca", "root", "--verification-code", code, "--out", str(verification))
    server.cli("ca", "verify", "root", str(verification))
    server.cli("group", "create", "factory-a", "--signing-cert", str(ca_dir / "factory-a.cert.pem"))
    return {"dir": ca_dir, "root": root, "a": ca_dir / "factory-a.cert.pem", "b": ca_dir / "factory-b.cert.pem"}


def _verification_code(output: str) -> str:
    for token in output.replace(":", " ").split():
        if len(token) >= 32 and token.isalnum() and token.upper() == token:
            return token
    raise AssertionError(f"no verification code in {output!r}")


def _device_cert(server: RunningServer, factory: dict[str, Path], registration_id: str, ca: str) -> X509:
    out = factory["dir"] / "devices"
    server.cli("create-device-cert", "--registration-id", registration_id, "--ca", ca, "--out", str(out))
    return X509(str(out / f"{registration_id}.cert.pem"), str(out / f"{registration_id}.key.pem"))


def _x509_client(server: RunningServer, registration_id: str, cert: X509, **kwargs: Any) -> ProvisioningDeviceClient:
    return ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        x509=cert,
        server_verification_cert=server.server_ca,
        **kwargs,
    )


def _sas_client(server: RunningServer, registration_id: str, key: str, **kwargs: Any) -> ProvisioningDeviceClient:
    return ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=registration_id,
        id_scope=server.id_scope,
        symmetric_key=key,
        server_verification_cert=server.server_ca,
        **kwargs,
    )


def _self_signed(tmp: Path, cn: str, *, days: int = 30, offset_days: int = -1) -> tuple[X509, Path]:
    dev = self_signed_device(tmp, cn, days=days, offset_days=offset_days)
    return X509(str(dev.cert_file), str(dev.key_file)), dev.cert_file


def _last_refusal(server: RunningServer, registration_id: str) -> Any:
    refusals = server.refusals(registration_id)
    assert refusals, f"no refusal recorded for {registration_id}"
    return refusals[0]


# --------------------------------------------------------------------------- admitted


def test_x509_chain_through_intermediate_group(server: RunningServer, factory: dict[str, Path]) -> None:
    cert = _device_cert(server, factory, "line-dev-1", "factory-a")
    result = _x509_client(server, "line-dev-1", cert).register()
    assert result.status == "assigned"
    assert result.registration_state.device_id == "line-dev-1"
    assert result.registration_state.assigned_hub in (HUB_A, HUB_B)
    assert result.registration_state.sub_status == "initialAssignment"
    record = server.registration("line-dev-1")
    assert record.enrollment_group_id == "factory-a" and record.status == "assigned"


def test_x509_self_signed_individual_over_websockets(server: RunningServer, tmp_path: Path) -> None:
    cert, cert_path = _self_signed(tmp_path, "solo-1")
    server.cli(
        "enrollment",
        "create",
        "solo-1",
        "--cert",
        str(cert_path),
        "--device-id",
        "solo-device",
        "--hub",
        HUB_B,
        "--allocation-policy",
        "static",
    )
    # A new individual enrollment is accepted without restarting the server.
    result = _x509_client(server, "solo-1", cert, websockets=True).register()
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == HUB_B
    assert result.registration_state.device_id == "solo-device"


def test_symmetric_key_individual(server: RunningServer) -> None:
    server.cli("enrollment", "create", "sym-1", "--symmetric-key", "--hub", HUB_A, "--allocation-policy", "static")
    primary, secondary = server.symmetric_keys("enrollment", "sym-1")
    first = _sas_client(server, "sym-1", primary).register()
    assert (first.status, first.registration_state.assigned_hub) == ("assigned", HUB_A)
    assert first.registration_state.device_id == "sym-1"
    again = _sas_client(server, "sym-1", secondary).register()
    assert again.registration_state.sub_status == "reprovisionedToInitialAssignment"
    assert again.registration_state.created_date_time == first.registration_state.created_date_time


def test_symmetric_key_group_derived(server: RunningServer) -> None:
    server.cli("group", "create", "sym-group", "--symmetric-key")
    primary, _ = server.symmetric_keys("group", "sym-group")
    result = _sas_client(server, "grp-dev-7", derived_key(primary, "grp-dev-7"), websockets=True).register()
    assert result.status == "assigned"
    assert result.registration_state.device_id == "grp-dev-7"
    assert server.registration("grp-dev-7").enrollment_group_id == "sym-group"
    # The group key itself is never accepted as a device key.
    with pytest.raises(CredentialError):
        _sas_client(server, "grp-dev-8", primary).register()
    assert _last_refusal(server, "grp-dev-8").reason == "NO_ENROLLMENT"


# --------------------------------------------------------------------------- refused


def test_unknown_ca_is_refused_with_reason(server: RunningServer, factory: dict[str, Path]) -> None:
    # factory-b chains to the verified root, but nobody enrolled it... its devices still reach
    # the root; a CA nobody uploaded at all is the unknown case:
    foreign_dir = factory["dir"] / "foreign"
    server.env["IOTDPS_CA_DIR"] = str(foreign_dir)
    try:
        server.cli("create-ca-root", "--name", "other-root")
        server.cli("create-ca-intermediate", "--name", "other-line", "--parent", "other-root")
        out = foreign_dir / "devices"
        server.cli("create-device-cert", "--registration-id", "stray-1", "--ca", "other-line", "--out", str(out))
    finally:
        server.env["IOTDPS_CA_DIR"] = str(factory["dir"])
    cert = X509(str(out / "stray-1.cert.pem"), str(out / "stray-1.key.pem"))
    with pytest.raises(CredentialError):
        _x509_client(server, "stray-1", cert).register()
    refusal = _last_refusal(server, "stray-1")
    assert refusal.reason == "CHAIN_UNKNOWN_CA"
    assert "not uploaded" in refusal.message


def test_ca_not_verified(server: RunningServer, factory: dict[str, Path], tmp_path: Path) -> None:
    # A second root, uploaded but never proven: its devices are refused with words naming it.
    other_dir = tmp_path / "ca2"
    server.env["IOTDPS_CA_DIR"] = str(other_dir)
    try:
        server.cli("create-ca-root", "--name", "unproven")
        out = other_dir / "devices"
        server.cli("create-device-cert", "--registration-id", "unproven-1", "--ca", "unproven", "--out", str(out))
    finally:
        server.env["IOTDPS_CA_DIR"] = str(factory["dir"])
    server.cli("ca", "upload", "unproven-root", str(other_dir / "unproven.cert.pem"))
    server.cli("group", "create", "unproven-group", "--ca-ref", "unproven-root")
    cert = X509(str(out / "unproven-1.cert.pem"), str(out / "unproven-1.key.pem"))
    with pytest.raises(CredentialError):
        _x509_client(server, "unproven-1", cert).register()
    refusal = _last_refusal(server, "unproven-1")
    assert refusal.reason == "CA_NOT_VERIFIED"
    assert "unproven-root" in refusal.message


def test_expired_certificate(server: RunningServer, tmp_path: Path) -> None:
    cert, cert_path = _self_signed(tmp_path, "old-1", days=1, offset_days=-10)
    server.cli("enrollment", "create", "old-1", "--cert", str(cert_path))
    with pytest.raises(CredentialError):
        _x509_client(server, "old-1", cert).register()
    assert _last_refusal(server, "old-1").reason == "CERT_EXPIRED"


def test_cn_mismatch(server: RunningServer, factory: dict[str, Path]) -> None:
    cert = _device_cert(server, factory, "real-name", "factory-a")
    with pytest.raises(CredentialError):
        _x509_client(server, "other-name", cert).register()
    refusal = _last_refusal(server, "other-name")
    assert refusal.reason == "CN_MISMATCH"
    assert "real-name" in refusal.message


def test_disabled_group_then_disabled_individual_inside_enabled_group(
    server: RunningServer, factory: dict[str, Path]
) -> None:
    server.cli("group", "create", "factory-b", "--signing-cert", str(factory["b"]), "--disabled")
    cert_b = _device_cert(server, factory, "b-dev-1", "factory-b")
    with pytest.raises(ClientError):  # the operation ends `disabled`, which 2.14.0 raises
        _x509_client(server, "b-dev-1", cert_b).register()
    assert server.registration("b-dev-1").status == "disabled"
    assert _last_refusal(server, "b-dev-1").reason == "GROUP_DISABLED"

    # Inside the enabled group factory-a, one device disabled individually.
    cert_a = _device_cert(server, factory, "a-dev-3", "factory-a")
    cert_pem = Path(cert_a.certificate_file)
    server.cli("enrollment", "create", "a-dev-3", "--cert", str(cert_pem), "--disabled")
    with pytest.raises(ClientError):
        _x509_client(server, "a-dev-3", cert_a).register()
    assert _last_refusal(server, "a-dev-3").reason == "ENROLLMENT_DISABLED"
    # Its neighbour in the same group still provisions.
    neighbour = _device_cert(server, factory, "a-dev-2", "factory-a")
    assert _x509_client(server, "a-dev-2", neighbour).register().status == "assigned"


def test_bad_sas(server: RunningServer) -> None:
    server.cli("enrollment", "create", "sym-bad", "--symmetric-key")
    wrong = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(CredentialError):
        _sas_client(server, "sym-bad", wrong).register()
    assert _last_refusal(server, "sym-bad").reason == "SAS_BAD_SIGNATURE"


def test_expired_sas_gets_connack_5(server: RunningServer) -> None:
    # The SDK always signs fresh tokens, so the expired one goes through our own MQTT client.
    server.cli("enrollment", "create", "sym-old", "--symmetric-key")
    primary, _ = server.symmetric_keys("enrollment", "sym-old")
    token = make_sas_token(server.id_scope, "sym-old", primary, int(time.time()) - 60)
    tls, _, code = dps_connect(server, "sym-old", token)
    tls.close()
    assert code == 5
    assert _last_refusal(server, "sym-old").reason == "SAS_EXPIRED"


def test_refusal_details_never_reach_the_device(server: RunningServer) -> None:
    # Whatever the reason, the device only learns "not authorized" (CONNACK 5); the words
    # are in the refusal log. A registration id nobody enrolled:
    with pytest.raises(CredentialError):
        _sas_client(server, "nobody-1", base64.b64encode(b"k" * 32).decode()).register()
    assert _last_refusal(server, "nobody-1").reason == "NO_ENROLLMENT"


# --------------------------------------------------------------------------- throttling


def test_throttled_then_success(tmp_path: Path) -> None:
    throttled = start_server(
        tmp_path,
        config="[limits]\nregistrations_per_second = 0.5\nregistration_burst = 1\nretry_after_seconds = 1\n",
    )
    try:
        throttled.cli("enrollment", "create", "slow-1", "--symmetric-key")
        primary, _ = throttled.symmetric_keys("enrollment", "slow-1")
        assert _sas_client(throttled, "slow-1", primary).register().status == "assigned"
        started = time.monotonic()
        # The bucket is empty now: the SDK gets 429 + retry-after, waits, and succeeds.
        second = _sas_client(throttled, "slow-1", primary).register()
        assert second.status == "assigned"
        assert time.monotonic() - started >= 1.0
        assert "registration throttled" in throttled.log()
    finally:
        assert throttled.stop() == 0


# --------------------------------------------------------------------------- trust changes


def test_deleted_enrollment_and_deleted_ca_are_refused_without_restart(server: RunningServer, tmp_path: Path) -> None:
    # An individual X.509 enrollment: accepted, deleted, then refused on the next handshake.
    cert, cert_path = _self_signed(tmp_path, "gone-1")
    server.cli("enrollment", "create", "gone-1", "--cert", str(cert_path))
    assert _x509_client(server, "gone-1", cert).register().status == "assigned"
    server.cli("enrollment", "delete", "gone-1")
    with pytest.raises(CredentialError):
        _x509_client(server, "gone-1", cert).register()
    refusal = _last_refusal(server, "gone-1")
    assert refusal.reason == "NO_ENROLLMENT", refusal

    # A verified CA with a group: its device is accepted, then the CA is deleted and refused.
    ca_dir = tmp_path / "ca-gone"
    saved = dict(server.env)
    server.env.update({"IOTDPS_CA_DIR": str(ca_dir), "IOTDPS_CA_PASSPHRASE": PASSPHRASE})
    try:
        server.cli("create-ca-root", "--name", "short-lived")
        out = ca_dir / "devices"
        server.cli("create-device-cert", "--registration-id", "gone-2", "--ca", "short-lived", "--out", str(out))
        server.cli("ca", "upload", "short-lived", str(ca_dir / "short-lived.cert.pem"), "--verified")
        server.cli("group", "create", "short-lived-group", "--ca-ref", "short-lived")
    finally:
        server.env.clear()
        server.env.update(saved)
    device = X509(str(out / "gone-2.cert.pem"), str(out / "gone-2.key.pem"))
    assert _x509_client(server, "gone-2", device).register().status == "assigned"
    server.cli("group", "delete", "short-lived-group")
    server.cli("ca", "delete", "short-lived")
    with pytest.raises(CredentialError):
        _x509_client(server, "gone-2", device).register()
    assert _last_refusal(server, "gone-2").reason == "CHAIN_UNKNOWN_CA"
