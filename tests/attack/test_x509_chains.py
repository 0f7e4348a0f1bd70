"""Crafted client chains: the handshake, `iotdps explain` and `iotdps cert verify` agree on each.

Until the chain policy (iotdps.pki.chain_policy), a chain OpenSSL refused at the handshake was
verified again by our own walker, which looked only at signatures, CA flags and dates, and its
verdict replaced OpenSSL's: a CA:TRUE device certificate, a serverAuth-only one, a path-length
violation, an unknown critical extension and an RSA-1024 key were all assigned, while
`iotdps cert verify` called the same bundles NOT VALID.

One real `iotdps up` (DPS on one loopback address, a hub on another); for every row of the
table, every verdict must be the row's:
- the DPS handshake over MQTT (raw TLS client, which can also present RSA-1024 and SHA-1
  certificates) and over HTTPS (the device REST API), and, for the rows the official SDK can
  load, the SDK over MQTT and over websockets;
- the hub listener: an identity of type certificateAuthority for the row's CN, then a raw hub
  CONNECT with the chain (the hub trusts what the TLS layer verified under the policy);
- `iotdps explain --cert` on the data dir and through the management API (/explain);
- `iotdps cert verify BUNDLE --root ANCHOR`, with the anchor the server trusts for that row
  (and `--crl` for the CRLs of that row's CAs, as the server holds them).
A refusal must also say why, in words, in the refusal log, in explain and in cert verify.

Revocation rows: the root's CRL (uploaded with `iotdps crl upload`) revokes a line CA, and the
line's CRL (the line CA uploaded unverified, only to hold it) revokes one device.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError
from azure.iot.hub import IoTHubRegistryManager
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from msrest.exceptions import HttpOperationError

from iotdps.cli.main import cli
from iotdps.protocols.mqtt.client import ClientSession
from iotdps.protocols.mqtt.events import ConnAckReceived
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.x509craft import Cert, ku, make, new_key, weak_signed, write_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

MGMT_PORT = 8443
_PORTS = (8883, 443, MGMT_PORT)
_UNKNOWN = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")


@dataclass(frozen=True)
class Row:
    """One crafted device: its certificate, what it presents above it, the anchor the server
    trusts for it (what `cert verify --root` gets), the verdict every surface must reach and,
    for a refusal, the words (a regex) every surface must give. `sdk`: the official SDK can
    load the certificate (not RSA-1024 or SHA-1); `websocket`: also try it over websockets.

    No brainpool row: no client here can sign a handshake with a brainpool key (TLS 1.2 has no
    signature scheme for it, Python's OpenSSL 3.0 sends no certificate in 1.3); the curve rule
    that refuses it is the one the P-521 row meets, and tests/unit/pki/test_chain_policy.py
    holds a brainpool leaf against the TLS seam in memory."""

    device: Cert
    above: tuple[x509.Certificate, ...]
    anchor: Cert
    admit: bool
    why: str = ""
    sdk: bool = True
    websocket: bool = False

    @property
    def rid(self) -> str:
        return self.device.cn


@dataclass
class World:
    server: RunningServer
    hub: str
    rows: dict[str, Row]
    files: Path
    remote_env: dict[str, str]
    crls: dict[str, tuple[x509.Certificate, Path]]  # the CRL's CA, and its file

    def bundle(self, row: Row) -> tuple[Path, Path]:
        directory = self.files / row.rid
        directory.mkdir(exist_ok=True)
        return row.device.write(directory, row.above)

    def anchor_file(self, row: Row) -> Path:
        return write_bundle(self.files / f"anchor-{row.anchor.cn}.pem", [row.anchor.cert])


def _crl(ca: Cert, *revoked: Cert) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


# name -> (the CA, the certificates its CRL revokes); set by _rows for the world fixture.
_REVOCATIONS: dict[str, tuple[Cert, tuple[Cert, ...]]] = {}


def _rows() -> tuple[dict[str, Row], dict[str, Cert]]:
    """The crafted chains, and the CAs to upload (name -> certificate; all verified)."""
    now = dt.datetime.now(dt.UTC)
    root = make("factory-root", None, ca=True)
    line = make("factory-line", root, ca=True)

    def dev(cn: str, issuer: Cert = line, **kw: object) -> Cert:
        return make(cn, issuer, **kw)  # type: ignore[arg-type]

    # A device certificate minted with CA:TRUE by mistake (device key usage, no keyCertSign),
    # and one with CA:TRUE and no key usage at all: OpenSSL lets the latter sign certificates.
    ca_leaf = dev("ca-leaf", ca=True, key_usage=ku(digital_signature=True), eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    ca_leaf_bare = dev("ca-leaf-bare", ca=True, key_usage=None, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    root0 = make("root-pathlen-0", None, ca=True, path_length=0)
    under_root0 = make("line-under-root0", root0, ca=True)
    line0 = make("line-pathlen-0", root, ca=True, path_length=0)
    sub_of_line0 = make("sub-of-line0", line0, ca=True)
    line_crit = make("line-critical-ext", root, ca=True, extra=[(_UNKNOWN, True)])
    line_expired = make(
        "line-expired", root, ca=True, not_before=now - dt.timedelta(days=20), not_after=now - dt.timedelta(days=1)
    )
    line_no_kcs = make("line-no-certsign", root, ca=True, key_usage=ku(digital_signature=True))
    rsa_root = make("rsa-root", None, ca=True, key=new_key("rsa2048"))
    sha1_dev = weak_signed(make("sha1-dev", rsa_root), rsa_root.key)
    # A chain that ends at an intermediate uploaded and verified as its own CA (its root unknown).
    other_root = make("other-root", None, ca=True)
    other_line = make("other-line", other_root, ca=True)
    # Individual enrollments: a self-signed device, and a CA-signed device enrolled by itself.
    solo = make("solo-self-signed", None)
    stray_root = make("stray-root", None, ca=True)
    stray_line = make("stray-line", stray_root, ca=True)
    enrolled_leaf = make("enrolled-ca-signed", stray_line)
    # Revocation: a line CA the root revoked, and a device its line revoked.
    line_revoked = make("line-revoked", root, ca=True)
    revoked_device = make("revoked-device", line)
    _REVOCATIONS.clear()
    _REVOCATIONS.update({"factory-root": (root, (line_revoked,)), "factory-line": (line, (revoked_device,))})

    # What a device under the factory line sends above its leaf.
    L = (line.cert,)
    rows = {
        # positive controls
        "root-line-device": Row(dev("good-device"), L, root, True, websocket=True),
        "rsa2048-device": Row(dev("rsa2048-device", key=new_key("rsa2048")), L, root, True),
        "p384-device": Row(dev("p384-device", key=new_key("p384")), L, root, True),
        "no-eku-device": Row(dev("no-eku-device", eku=None), L, root, True),
        "rsa-root-device": Row(make("rsa-root-device", rsa_root), (), rsa_root, True),
        "intermediate-anchor": Row(make("via-line-anchor", other_line), (other_line.cert,), other_line, True),
        "self-signed-enrolled": Row(solo, (), solo, True, websocket=True),
        "ca-signed-leaf-enrolled": Row(enrolled_leaf, (stray_line.cert,), enrolled_leaf, True),
        # refused
        "leaf-ca-true": Row(ca_leaf, L, root, False, r"must not be a CA", websocket=True),
        "signed-by-ca-leaf": Row(
            dev("minted-by-ca-leaf", issuer=ca_leaf), (ca_leaf.cert, *L), root, False, r"keyCertSign"
        ),
        "signed-by-bare-ca-leaf": Row(
            dev("minted-by-bare-ca-leaf", issuer=ca_leaf_bare), (ca_leaf_bare.cert, *L), root, False, r"keyCertSign"
        ),
        "server-auth-only": Row(
            dev("server-eku-device", eku=[ExtendedKeyUsageOID.SERVER_AUTH]), L, root, False, r"clientAuth"
        ),
        "any-eku-only": Row(
            dev("any-eku-device", eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), L, root, False, r"clientAuth"
        ),
        "root-pathlen-0": Row(
            make("pathlen-root-device", under_root0), (under_root0.cert,), root0, False, r"path length"
        ),
        "line-pathlen-0-sub-ca": Row(
            make("pathlen-line-device", sub_of_line0), (sub_of_line0.cert, line0.cert), root, False, r"path length"
        ),
        "critical-ext-leaf": Row(
            dev("critical-ext-device", extra=[(_UNKNOWN, True)]), L, root, False, r"unknown critical extension"
        ),
        "critical-ext-line": Row(
            make("critical-line-device", line_crit), (line_crit.cert,), root, False, r"unknown critical extension"
        ),
        "rsa1024-leaf": Row(dev("rsa1024-device", key=new_key("rsa1024")), L, root, False, r"RSA-1024", sdk=False),
        "sha1-leaf": Row(sha1_dev, (), rsa_root, False, r"SHA-1", sdk=False),
        "expired-line": Row(
            make("expired-line-device", line_expired, not_after=now + dt.timedelta(days=5)),
            (line_expired.cert,),
            root,
            False,
            r"expired",
        ),
        "not-yet-valid-leaf": Row(
            dev("future-device", not_before=now + dt.timedelta(days=2)), L, root, False, r"not (yet )?valid"
        ),
        "line-without-certsign": Row(
            make("no-certsign-device", line_no_kcs), (line_no_kcs.cert,), root, False, r"keyCertSign"
        ),
        "p521-leaf": Row(dev("p521-device", key=new_key("p521")), L, root, False, r"P-256 and P-384"),
        "revoked-leaf": Row(revoked_device, L, root, False, r"revoked-device.* revoked", websocket=True),
        "revoked-line": Row(
            make("revoked-line-device", line_revoked), (line_revoked.cert,), root, False, r"line-revoked.* revoked"
        ),
    }
    uploads = {"factory-root": root, "root-pathlen-0": root0, "rsa-root": rsa_root, "other-line": other_line}
    return rows, uploads


def _key(server: RunningServer, policy: str) -> str:
    doc = json.loads((server.data_dir / "access-policies.json").read_text())
    return str(next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("x509-chains")
    hub = free_loopback_address(_PORTS)
    server = start_server(
        tmp, address=free_loopback_address(_PORTS), config=f'[[hubs]]\nhost_name = "{hub}"\nbind = "{hub}"\n'
    )
    try:
        rows, uploads = _rows()
        files = tmp / "files"
        files.mkdir()
        for name, ca in uploads.items():
            path = write_bundle(files / f"{name}.pem", [ca.cert])
            server.cli("ca", "upload", name, str(path), "--verified")
            server.cli("group", "create", f"group-{name}", "--ca-ref", name)
        for row in rows.values():
            if row.anchor is row.device:  # an individual enrollment: the leaf alone is its certificate
                path = write_bundle(files / f"enrolled-{row.rid}.pem", [row.device.cert])
                server.cli("enrollment", "create", row.rid, "--cert", str(path))
        crls: dict[str, tuple[x509.Certificate, Path]] = {}
        line_file = write_bundle(files / "factory-line.pem", [_REVOCATIONS["factory-line"][0].cert])
        server.cli("ca", "upload", "factory-line", str(line_file))  # unverified: only to hold its CRL
        for name, (ca, revoked) in _REVOCATIONS.items():
            crl_file = files / f"{name}.crl.pem"
            crl_file.write_bytes(_crl(ca, *revoked).public_bytes(serialization.Encoding.PEM))
            server.cli("crl", "upload", name, str(crl_file))
            crls[name] = (ca.cert, crl_file)
        remote_env = {
            "IOTDPS_CONNECTION_STRING": (
                f"HostName={server.address}:{MGMT_PORT};SharedAccessKeyName=provisioningserviceowner;"
                f"SharedAccessKey={_key(server, 'provisioningserviceowner')}"
            ),
            "IOTDPS_SERVER_CA": str(server.server_ca_path),
        }
        world = World(server, hub, rows, files, remote_env, crls)
        # The server reads new anchors on its next poll, or at once when a handshake fails
        # against its old ones; wait for the positive control to be trusted.
        deadline = time.monotonic() + 20
        while _dps_mqtt(world, rows["root-line-device"]) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        # And for the CRLs (read on the trust poll: the CLI wrote them to the store).
        while _dps_mqtt(world, rows["revoked-leaf"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield world
    finally:
        assert server.stop() == 0, server.log()


# --------------------------------------------------------------------------- the surfaces


def _client_context(world: World, row: Row) -> ssl.SSLContext:
    """TLS 1.2 as the Azure SDK speaks it; security level 0 so that this client can present the
    weak certificates (the server must refuse them, not the client's own library)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_verify_locations(cadata=world.server.server_ca)
    cert_file, key_file = world.bundle(row)
    context.load_cert_chain(cert_file, key_file)
    return context


def _connack(context: ssl.SSLContext, address: str, client_id: str, username: str) -> int:
    raw = socket.create_connection((address, 8883), timeout=10)
    with context.wrap_socket(raw, server_hostname=address) as tls:
        session = ClientSession()
        tls.sendall(session.connect(client_id, username, None, keepalive=60))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = tls.recv(4096)
            if not data:
                break
            for event in session.receive_data(data):
                if isinstance(event, ConnAckReceived):
                    return event.return_code
    raise AssertionError(f"no CONNACK for {client_id}")


def _dps_mqtt(world: World, row: Row) -> int:
    username = f"{world.server.id_scope}/registrations/{row.rid}/api-version=2019-03-31&ClientVersion=attack"
    return _connack(_client_context(world, row), world.server.address, row.rid, username)


def _dps_https(world: World, row: Row) -> int:
    address = world.server.address
    connection = http.client.HTTPSConnection(address, 443, context=_client_context(world, row), timeout=10)
    try:
        connection.request(
            "PUT",
            f"/{world.server.id_scope}/registrations/{row.rid}/register?api-version=2021-06-01",
            body=json.dumps({"registrationId": row.rid}),
            headers={"Content-Type": "application/json"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def _sdk(world: World, row: Row, *, websockets: bool) -> bool:
    cert_file, key_file = world.bundle(row)
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=world.server.address,
        registration_id=row.rid,
        id_scope=world.server.id_scope,
        x509=X509(str(cert_file), str(key_file)),
        server_verification_cert=world.server.server_ca,
        websockets=websockets,
    )
    try:
        result = client.register()
    except (CredentialError, ClientError):
        return False
    return bool(result.status == "assigned")


def _hub_mqtt(world: World, row: Row) -> int:
    """A certificateAuthority identity for the row's CN on the hub, then a hub CONNECT."""
    registry = IoTHubRegistryManager.from_connection_string(
        f"HostName={world.hub}:{MGMT_PORT};SharedAccessKeyName=iothubowner;"
        f"SharedAccessKey={_key(world.server, 'iothubowner')}"
    )
    registry.protocol.config.connection.verify = str(world.server.server_ca_path)
    try:
        existing = registry.get_device(row.rid)
    except HttpOperationError as exc:  # 404: no such device yet
        assert exc.response.status_code == 404
        existing = None
    if existing is None:
        registry.create_device_with_certificate_authority(row.rid, "enabled")
    else:  # provisioned by DPS as a thumbprint device: make the chain what counts
        registry.update_device_with_certificate_authority(row.rid, existing.etag, "enabled")
    username = f"{world.hub}/{row.rid}/?api-version=2021-04-12"
    return _connack(_client_context(world, row), world.hub, row.rid, username)


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result.exit_code, result.output


def _explain(world: World, row: Row, *, remote: bool) -> str:
    cert_file, _ = world.bundle(row)
    env = {**world.server.env, **(world.remote_env if remote else {})}
    code, output = _cli(["explain", "--cert", str(cert_file)], env)
    assert code == (0 if row.admit else 1), output  # explain exits 1 when it would refuse
    return output


def _cert_verify(world: World, row: Row) -> tuple[bool, str]:
    cert_file, _ = world.bundle(row)
    mine = {row.anchor.cert, *row.above}
    crls = [arg for ca, path in world.crls.values() if ca in mine for arg in ("--crl", str(path))]
    code, output = _cli(["cert", "verify", str(cert_file), "--root", str(world.anchor_file(row)), *crls], {})
    assert code in (0, 1), output
    return code == 0, output


def _admitted(explain_output: str) -> bool:
    decisions = [line for line in explain_output.splitlines() if line.startswith("decision: ")]
    assert len(decisions) == 1, explain_output
    return decisions[0] == "decision: admit"


# --------------------------------------------------------------------------- the table

ROW_NAMES = (
    "root-line-device",
    "rsa2048-device",
    "p384-device",
    "no-eku-device",
    "rsa-root-device",
    "intermediate-anchor",
    "self-signed-enrolled",
    "ca-signed-leaf-enrolled",
    "leaf-ca-true",
    "signed-by-ca-leaf",
    "signed-by-bare-ca-leaf",
    "server-auth-only",
    "any-eku-only",
    "root-pathlen-0",
    "line-pathlen-0-sub-ca",
    "critical-ext-leaf",
    "critical-ext-line",
    "rsa1024-leaf",
    "sha1-leaf",
    "expired-line",
    "not-yet-valid-leaf",
    "line-without-certsign",
    "p521-leaf",
    "revoked-leaf",
    "revoked-line",
)


def test_the_table_is_complete(world: World) -> None:
    assert set(world.rows) == set(ROW_NAMES)


@pytest.mark.parametrize("name", ROW_NAMES)
def test_every_surface_agrees(world: World, name: str) -> None:
    row = world.rows[name]
    verdicts: dict[str, bool] = {
        "dps mqtt": _dps_mqtt(world, row) == 0,
        "dps https": _dps_https(world, row) in (200, 202),
    }
    if row.sdk:
        verdicts["dps mqtt (sdk)"] = _sdk(world, row, websockets=False)
    if row.websocket:
        verdicts["dps websockets (sdk)"] = _sdk(world, row, websockets=True)
    verdicts["hub mqtt"] = _hub_mqtt(world, row) == 0
    local = _explain(world, row, remote=False)
    remote = _explain(world, row, remote=True)
    verdicts["iotdps explain"] = _admitted(local)
    verdicts["iotdps explain (API /explain)"] = _admitted(remote)
    verified, verify_output = _cert_verify(world, row)
    verdicts["iotdps cert verify"] = verified
    expected = {surface: row.admit for surface in verdicts}
    assert verdicts == expected, f"{name}: {local}\n{verify_output}"
    if row.admit:
        return
    # Refused, with the reason in words everywhere an operator looks.
    refusals = world.server.refusals(row.rid)
    assert refusals, f"no refusal recorded for {row.rid}"
    for where, text in (
        ("refusal log", refusals[0].message),
        ("explain", local),
        ("API /explain", remote),
        ("cert verify", verify_output),
    ):
        assert re.search(row.why, text), f"{name}: {where} does not say {row.why!r}: {text}"


def test_hub_thumbprint_device_with_a_weak_key_is_refused(world: World) -> None:
    """A hub identity that trusts a thumbprint (no chain needed, as on IoT Hub) still refuses a
    certificate that breaks the leaf rules: here a self-signed RSA-1024 one."""
    weak = make("weak-thumbprint-device", None, key=new_key("rsa1024"))
    row = Row(weak, (), weak, False)
    registry = IoTHubRegistryManager.from_connection_string(
        f"HostName={world.hub}:{MGMT_PORT};SharedAccessKeyName=iothubowner;"
        f"SharedAccessKey={_key(world.server, 'iothubowner')}"
    )
    registry.protocol.config.connection.verify = str(world.server.server_ca_path)
    thumbprint = weak.cert.fingerprint(hashes.SHA256()).hex().upper()
    registry.create_device_with_x509(row.rid, thumbprint, thumbprint, "enabled")
    username = f"{world.hub}/{row.rid}/?api-version=2021-04-12"
    assert _connack(_client_context(world, row), world.hub, row.rid, username) == 5
    deadline = time.monotonic() + 5
    while "RSA-1024" not in world.server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(
        rf"device {re.escape(row.rid)} from \S+ refused at CONNECT: the device certificate breaks", world.server.log()
    )
