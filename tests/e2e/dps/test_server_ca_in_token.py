"""Issue 20: the server CA of `iotdps up` in a real SoftHSM2 token.

A server started with `[tls] ca_pkcs11_uri` makes its CA key inside the token (no key file, no
passphrase), and the unmodified azure-iot-device SDK provisions over real TLS trusting
tls/server-ca.pem. Later starts reissue the server certificate by signing through the token; a
wrong PIN, a missing token or a missing key stop the start with one `error:` line (exit 2) and
nothing written. A server whose CA began as a key file moves it into the token once with
`iotdps tls move-to-token` and restarts on it; `iotdps tls rotate/activate/retire` make the next
CA in the token, sign through it, and destroy the old key object.

Every process that touches the token is a child with the token's environment (token_cli.py
says why); the PIN is never in argv, and no output or log of these runs contains it.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.device import ProvisioningDeviceClient
from cryptography import x509

from iotdps.sas import derive_device_key
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import SRC, RunningServer, start_server
from iotdps_testing.token_cli import TokenCli, start_token_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PIN = "server-hsm-pin-8642"
TOKEN_CONFIG = '[tls]\nca_pkcs11_uri = "pkcs11:token=server-hsm;object=server-ca"\n'

# A python-pkcs11 session of the test's own: what the token itself says about a key.
_INSPECT = """
import os, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
lib = pkcs11.lib(os.environ["IOTDPS_PKCS11_MODULE"])
token = lib.get_token(token_label=os.environ["IOTDPS_PKCS11_TOKEN"])
with token.open(user_pin=os.environ["IOTDPS_PKCS11_PIN"]) as session:
    keys = list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: sys.argv[1]}))
    if not keys:
        print("absent")
        sys.exit(0)
    key = keys[0]
    print("sensitive" if key[Attribute.SENSITIVE] else "NOT-sensitive")
    print("extractable" if key[Attribute.EXTRACTABLE] else "non-extractable")
    print("local" if key[Attribute.LOCAL] else "imported")
    try:
        key[Attribute.VALUE]
        print("EXPORTED")
    except pkcs11.AttributeSensitive:
        print("export refused")
"""


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    return start_token_cli(tmp_path_factory.mktemp("server-hsm"), label="server-hsm", user_pin=PIN)


def _env(tc: TokenCli, **overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in tc.env(**overrides).items() if k not in ("IOTDPS_CA_DIR", "IOTDPS_DATA_DIR")}
    env.pop("IOTDPS_CA_PASSPHRASE", None)
    return env


def _key_facts(tc: TokenCli, label: str) -> list[str]:
    done = tc.python(_INSPECT, label)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _tls(tc: TokenCli, server: RunningServer, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    return tc.run("tls", *args, IOTDPS_DATA_DIR=str(server.data_dir), **env)


def _presented(server: RunningServer) -> x509.Certificate:
    """The leaf the DPS MQTT port presents to a client trusting tls/server-ca.pem only."""
    ctx = ssl.create_default_context(cadata=server.server_ca)
    with (
        socket.create_connection((server.address, 8883), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server.address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _sdk_register(server: RunningServer, group_key: str, rid: str) -> None:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=server.address,
        registration_id=rid,
        id_scope=server.id_scope,
        symmetric_key=derive_device_key(group_key, rid),
        server_verification_cert=server.server_ca,
    )
    assert client.register().status == "assigned"


def _restart(server: RunningServer, tmp: Path, env: dict[str, str], config: str = "") -> RunningServer:
    assert server.stop() == 0, server.log()
    return start_server(tmp, address=server.address, config=config, env=env)


def _config_file(tmp: Path, address: str, data_dir: Path, config: str) -> Path:
    path = tmp / f"iotdps-{address}-{len(list(tmp.glob('iotdps-*.toml')))}.toml"
    path.write_text(
        f'data_dir = "{data_dir}"\n[dps]\nhost_name = "{address}"\nbind = "{address}"\n'
        f'[management]\nbind = "{address}"\n' + config
    )
    return path


def _up_error(config_path: Path, env: dict[str, str]) -> str:
    """`iotdps up` that must refuse to start: exit 2, no traceback, no PIN, one `error:` line."""
    done = subprocess.run(
        [sys.executable, "-m", "iotdps", "up", "--config", str(config_path)],
        env={**env, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and PIN not in done.stdout + done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def _up_fails(tmp: Path, env: dict[str, str], config: str = TOKEN_CONFIG) -> tuple[str, Path]:
    """A first start that must be refused: its error line and its data dir."""
    address = free_loopback_address()
    data_dir = tmp / f"data-{address}"
    return _up_error(_config_file(tmp, address, data_dir, config), env), data_dir


@pytest.fixture(scope="module")
def token_server(hsm: TokenCli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("token-ca"), config=TOKEN_CONFIG, env=_env(hsm))
    yield server
    server.stop()


def test_first_start_makes_the_ca_key_in_the_token_and_the_sdk_provisions(
    hsm: TokenCli, token_server: RunningServer
) -> None:
    tls = token_server.data_dir / "tls"
    assert not (tls / "server-ca.key").exists() and not (tls / "server-ca.passphrase").exists()
    recorded = (tls / "server-ca.pkcs11").read_text()
    assert recorded.startswith("pkcs11:") and "object=server-ca" in recorded and "token=server-hsm" in recorded
    # Made inside the token, sensitive, never extractable: the token refuses to hand it out.
    assert _key_facts(hsm, "server-ca") == ["sensitive", "non-extractable", "local", "export refused"]
    ca = x509.load_pem_x509_certificate(token_server.server_ca.encode())
    leaf = _presented(token_server)  # real TLS, trusting server-ca.pem only
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    token_server.cli("group", "create", "token-ca-group", "--symmetric-key")
    group_key = token_server.symmetric_keys("group", "token-ca-group")[0]
    _sdk_register(token_server, group_key, "token-ca-dev-1")
    assert PIN not in token_server.log()


def test_a_later_start_reissues_the_server_certificate_through_the_token(
    hsm: TokenCli, token_server: RunningServer, tmp_path: Path
) -> None:
    before = _presented(token_server)
    # A new name the certificate does not cover: the restart must sign a new one via the token.
    tmp = token_server.log_path.parent
    server = _restart(token_server, tmp, _env(hsm), TOKEN_CONFIG + 'extra_names = ["token-ca.iotdps.test"]\n')
    try:
        after = _presented(server)
        assert after.serial_number != before.serial_number
        san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "token-ca.iotdps.test" in san.get_values_for_type(x509.DNSName)
        after.verify_directly_issued_by(x509.load_pem_x509_certificate(server.server_ca.encode()))
        assert not (server.data_dir / "tls" / "server-ca.key").exists()
        assert PIN not in server.log()
    finally:
        token_server.process = server.process  # the module fixture stops whichever runs
        token_server.log_path = server.log_path


def test_rotation_with_the_ca_in_the_token(hsm: TokenCli, token_server: RunningServer) -> None:
    tls = token_server.data_dir / "tls"
    old_ca = x509.load_pem_x509_certificate(token_server.server_ca.encode())
    done = _tls(hsm, token_server, "rotate")
    assert done.returncode == 0, done.stderr
    next_uri = (tls / "next" / "server-ca.pkcs11").read_text()
    label = next(part.split("=", 1)[1] for part in next_uri.strip()[7:].split(";") if part.startswith("object="))
    assert label.startswith("iotdps-server-ca-") and not (tls / "next" / "server-ca.key").exists()
    assert _key_facts(hsm, label) == ["sensitive", "non-extractable", "local", "export refused"]

    done = _tls(hsm, token_server, "activate", "--force")
    assert done.returncode == 0, done.stderr
    new_ca = x509.load_pem_x509_certificate((tls / "server-ca.pem").read_bytes())
    assert new_ca.subject != old_ca.subject
    assert (tls / "server-ca.pkcs11").read_text() == next_uri and not (tls / "server-ca.key").exists()
    deadline = time.monotonic() + 30
    while _presented_issuer(token_server, tls) != new_ca.subject:  # the running server follows the files
        assert time.monotonic() < deadline, "the server never presented the new chain"
        time.sleep(0.5)
    assert _key_facts(hsm, "server-ca")[0] == "sensitive"  # the old key waits for retire

    done = _tls(hsm, token_server, "retire")
    assert done.returncode == 0, done.stderr
    assert "destroyed in the PKCS#11 token" in done.stdout
    assert _key_facts(hsm, "server-ca") == ["absent"]
    assert _key_facts(hsm, label)[0] == "sensitive"  # the active one untouched
    assert PIN not in done.stdout + done.stderr + token_server.log()


def _presented_issuer(server: RunningServer, tls: Path) -> x509.Name:
    bundle = (tls / "ca-bundle.pem").read_text() if (tls / "ca-bundle.pem").exists() else server.server_ca
    ctx = ssl.create_default_context(cadata=bundle)
    with (
        socket.create_connection((server.address, 8883), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server.address) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer


def test_wrong_pin_missing_token_or_key_stop_the_start_in_one_line(hsm: TokenCli, tmp_path: Path) -> None:
    line, data_dir = _up_fails(tmp_path, _env(hsm, IOTDPS_PKCS11_PIN="not-the-pin-0000"))
    assert "wrong PIN" in line and "server-hsm" in line
    # Nothing half-written: no CA certificate, no URI record, no key file.
    assert not any((data_dir / "tls" / name).exists() for name in ("server-ca.pem", "server-ca.pkcs11", "server.key"))
    line, _ = _up_fails(tmp_path, _env(hsm), '[tls]\nca_pkcs11_uri = "pkcs11:token=no-such-token;object=server-ca"\n')
    assert "no PKCS#11 token labelled 'no-such-token'" in line
    line, _ = _up_fails(tmp_path, _env(hsm, IOTDPS_PKCS11_MODULE=None))
    assert "IOTDPS_PKCS11_MODULE" in line


def test_a_missing_key_or_pin_at_a_later_start_is_one_line(hsm: TokenCli, tmp_path: Path) -> None:
    # A data dir whose record names a key the token does not have (destroyed, or another token's).
    server = start_server(tmp_path / "gone", config=TOKEN_CONFIG.replace("server-ca", "gone-ca"), env=_env(hsm))
    assert server.stop() == 0
    uri_file = server.data_dir / "tls" / "server-ca.pkcs11"
    uri_file.write_text(uri_file.read_text().replace("object=gone-ca", "object=never-made").split(";id=")[0] + "\n")
    config_path = _config_file(tmp_path, server.address, server.data_dir, TOKEN_CONFIG)
    assert "no private key with label 'never-made'" in _up_error(config_path, _env(hsm))
    assert "wrong PIN" in _up_error(config_path, _env(hsm, IOTDPS_PKCS11_PIN="not-the-pin-0000"))


def test_move_a_file_ca_into_the_token_then_restart(hsm: TokenCli, tmp_path: Path) -> None:
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTDPS_", "SOFTHSM2_"))}
    server = start_server(tmp_path, env=plain_env)  # the usual first start: an encrypted key file
    tls = server.data_dir / "tls"
    try:
        assert (tls / "server-ca.key").exists()
        ca_before = server.server_ca
        server.cli("group", "create", "moved-group", "--symmetric-key")
        group_key = server.symmetric_keys("group", "moved-group")[0]
    finally:
        assert server.stop() == 0
    # Configured for the token while the key is still a file: refused until moved, in one line.
    token_config = _config_file(tmp_path, server.address, server.data_dir, TOKEN_CONFIG)
    assert "iotdps tls move-to-token" in _up_error(token_config, _env(hsm))
    assert (tls / "server-ca.key").exists() and not (tls / "server-ca.pkcs11").exists()
    done = _tls(hsm, server, "move-to-token", "--pkcs11-uri", "pkcs11:object=moved-server-ca")
    assert done.returncode == 0, done.stderr
    assert "now in the PKCS#11 token only" in done.stdout and PIN not in done.stdout + done.stderr
    assert not (tls / "server-ca.key").exists() and "object=moved-server-ca" in (tls / "server-ca.pkcs11").read_text()
    # Imported: sensitive and non-extractable from now on (the token says it was once outside).
    assert _key_facts(hsm, "moved-server-ca") == ["sensitive", "non-extractable", "imported", "export refused"]
    again = _tls(hsm, server, "move-to-token", "--pkcs11-uri", "pkcs11:object=moved-server-ca")
    assert again.returncode == 0 and "already in the PKCS#11 token" in again.stdout

    # Restart on the token (no configuration needed: tls/server-ca.pkcs11 names the key); a
    # lost server certificate is reissued through it, under the same CA.
    (tls / "server.pem").unlink()
    (tls / "server.key").unlink()
    restarted = start_server(tmp_path, address=server.address, env=_env(hsm))
    try:
        assert restarted.server_ca == ca_before
        _presented(restarted).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before.encode()))
        _sdk_register(restarted, group_key, "moved-dev-1")
        assert PIN not in restarted.log()
    finally:
        assert restarted.stop() == 0
    # Without the token's PIN the moved CA cannot start: one line.
    plain_config = _config_file(tmp_path, server.address, server.data_dir, "")
    assert "IOTDPS_PKCS11_PIN" in _up_error(plain_config, _env(hsm, IOTDPS_PKCS11_PIN=None))
