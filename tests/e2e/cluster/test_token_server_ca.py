"""Issue 20 on a cluster: the service's server CA in a PKCS#11 token, never a key in the database.

Two real `iotdps up` nodes on one PostgreSQL database reach the same SoftHSM2 token (one token
directory: what a network HSM is to real nodes). The shared record of the server CA holds its
certificate and the key's URI only; both nodes present certificates signed through the token.
A cluster whose CA began as a key file moves it into the token with `iotdps tls move-to-token`
on one node; the record then names the token key, and the other node drops its key file at its
next start. A service-wide rotation (`iotdps tls rotate/activate/retire --dsn`) makes the next
CA's key in the token, every node signs its own certificate through it without a restart, and
`retire` destroys the old key object; no record ever holds a key.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from iotdps.pki.encoding import sha256_thumbprint
from iotdps.sealed import open_sealed
from iotdps.secret import Secret
from iotdps_testing.cluster import PASSPHRASE, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer
from iotdps_testing.token_cli import TokenCli, start_token_cli

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(600)]

PIN = "cluster-hsm-pin-7531"


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    return start_token_cli(tmp_path_factory.mktemp("cluster-hsm"), label="cluster-hsm", user_pin=PIN)


def _token_env(tc: TokenCli, **extra: str) -> dict[str, str]:
    env = tc.env()
    names = ("SOFTHSM2_CONF", "IOTDPS_PKCS11_MODULE", "IOTDPS_PKCS11_PIN", "IOTDPS_PKCS11_TOKEN")
    return {k: env[k] for k in names} | extra


def _server_ca_record(dsn: str) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> str:
        engine = create_async_engine(dsn)
        try:
            async with engine.connect() as conn:
                query = text("SELECT value FROM service_secrets WHERE name = 'server-ca'")
                value = (await conn.execute(query)).scalar()
        finally:
            await engine.dispose()
        assert isinstance(value, str)
        return value

    doc: dict[str, Any] = json.loads(open_sealed("server-ca", asyncio.run(read()), Secret(PASSPHRASE)))
    return doc


def _leaf(node: RunningServer) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(node.server_ca_path))
    with (
        socket.create_connection((node.address, 8883), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=node.address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _no_key_file(node: RunningServer) -> bool:
    tls = node.data_dir / "tls"
    return not (tls / "server-ca.key").exists() and (tls / "server-ca.pkcs11").exists()


def test_the_shared_record_holds_the_uri_and_no_key(tmp_path: Path, dsn: str, hsm: TokenCli) -> None:
    service = free_loopback_address()
    env = _token_env(hsm, IOTDPS_TLS_CA_PKCS11_URI="pkcs11:object=cluster-server-ca")
    first = start_node(tmp_path, service_host=service, dsn=dsn, env=env)
    try:
        second = start_node(tmp_path, service_host=service, dsn=dsn, env=env)
        try:
            record = _server_ca_record(dsn)
            assert set(record) == {"certificate", "pkcs11_uri"} and "PRIVATE KEY" not in json.dumps(record)
            assert "object=cluster-server-ca" in record["pkcs11_uri"]
            ca = x509.load_pem_x509_certificate(record["certificate"].encode())
            for node in (first, second):
                assert _no_key_file(node)
                _leaf(node).verify_directly_issued_by(ca)  # each node's own leaf, signed via the token
                assert PIN not in node.log()
        finally:
            second.stop()
    finally:
        first.stop()


def test_move_to_token_updates_the_record_and_the_other_node_follows(tmp_path: Path, dsn: str, hsm: TokenCli) -> None:
    service = free_loopback_address()
    first = start_node(tmp_path, service_host=service, dsn=dsn)
    second = start_node(tmp_path, service_host=service, dsn=dsn)
    first.stop()
    second.stop()
    assert set(_server_ca_record(dsn)) == {"certificate", "key"}
    assert (second.data_dir / "tls" / "server-ca.key").exists()
    move = ["tls", "move-to-token", "--data-dir", str(first.data_dir), "--pkcs11-uri", "pkcs11:object=moved-cluster-ca"]
    # Without the cluster's database: refused (the record would still hold the key), nothing moved.
    done = hsm.run(*move, IOTDPS_SERVER_CA_PASSPHRASE=PASSPHRASE)
    assert done.returncode == 2 and "--dsn" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (first.data_dir / "tls" / "server-ca.key").exists()
    done = hsm.run(*move, "--dsn", dsn, IOTDPS_SERVER_CA_PASSPHRASE=PASSPHRASE)
    assert done.returncode == 0, done.stderr
    assert "now in the PKCS#11 token only" in done.stdout and "names the token key now" in done.stdout
    assert PIN not in done.stdout + done.stderr
    record = _server_ca_record(dsn)
    assert set(record) == {"certificate", "pkcs11_uri"} and "object=moved-cluster-ca" in record["pkcs11_uri"]
    assert "PRIVATE KEY" not in json.dumps(record)
    # The move is in the service's audit trail, with the CA's thumbprint and no key or PIN.
    listed = hsm.run("audit", "list", "--action", "server-ca", "--json", "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]  # JSON lines
    assert [e["action"] for e in entries] == ["server-ca.move-to-token"] and entries[0]["actor"].startswith("local:")
    ca = x509.load_pem_x509_certificate(record["certificate"].encode())
    detail = entries[0]["detail"]
    assert detail["presentedCaAfter"] == sha256_thumbprint(ca) and detail["sharedRecordUpdated"] is True
    assert PIN not in listed.stdout and PASSPHRASE not in listed.stdout
    # The other node adopts the record's custody at its next start: its key file goes, and its
    # lost server certificate is reissued through the token.
    (second.data_dir / "tls" / "server.pem").unlink()
    again = start_node(tmp_path, service_host=service, dsn=dsn, address=second.address, env=_token_env(hsm))
    try:
        assert _no_key_file(again)
        _leaf(again).verify_directly_issued_by(x509.load_pem_x509_certificate(record["certificate"].encode()))
    finally:
        again.stop()


def _rotation_record(dsn: str) -> dict[str, Any]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> str:
        engine = create_async_engine(dsn)
        try:
            async with engine.connect() as conn:
                query = text("SELECT value FROM service_secrets WHERE name = 'server-ca-rotation'")
                value = (await conn.execute(query)).scalar()
        finally:
            await engine.dispose()
        assert isinstance(value, str)
        return value

    doc: dict[str, Any] = json.loads(open_sealed("server-ca-rotation", asyncio.run(read()), Secret(PASSPHRASE)))
    return doc


def _wait_for_issuer(node: RunningServer, ca: x509.Certificate) -> None:
    deadline = time.monotonic() + 30
    while True:
        bundle = (node.data_dir / "tls" / "ca-bundle.pem").read_text()
        context = ssl.create_default_context(cadata=bundle)
        try:
            with (
                socket.create_connection((node.address, 8883), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=node.address) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            if x509.load_der_x509_certificate(der).issuer == ca.subject:
                return
        except (ssl.SSLError, OSError):
            pass
        assert time.monotonic() < deadline, f"{node.address} never presented a certificate from the new CA"
        time.sleep(0.5)


def test_a_service_wide_rotation_keeps_every_key_in_the_token(tmp_path: Path, dsn: str, hsm: TokenCli) -> None:
    service = free_loopback_address()
    env = _token_env(hsm, IOTDPS_TLS_CA_PKCS11_URI="pkcs11:object=rotating-cluster-ca")
    first = start_node(tmp_path, service_host=service, dsn=dsn, env=env)
    second = start_node(tmp_path, service_host=service, dsn=dsn, env=env)
    try:
        tls = ["--data-dir", str(first.data_dir), "--dsn", dsn]
        done = hsm.run("tls", "rotate", *tls, IOTDPS_SERVER_CA_PASSPHRASE=PASSPHRASE)
        assert done.returncode == 0, done.stderr
        pending = _rotation_record(dsn)["next"]
        assert set(pending) == {"certificate", "pkcs11_uri"} and "object=iotdps-server-ca-" in pending["pkcs11_uri"]
        new_ca = x509.load_pem_x509_certificate(pending["certificate"].encode())
        done = hsm.run("tls", "activate", "--force", *tls, IOTDPS_SERVER_CA_PASSPHRASE=PASSPHRASE)
        assert done.returncode == 0, done.stderr
        record = _server_ca_record(dsn)
        assert set(record) == {"certificate", "pkcs11_uri"} and record["pkcs11_uri"] == pending["pkcs11_uri"]
        for node in (first, second):  # each issues its own leaf through the token, no restart
            _wait_for_issuer(node, new_ca)
            assert _no_key_file(node)
        assert "object=rotating-cluster-ca" in _rotation_record(dsn)["retiring_key"]
        done = hsm.run("tls", "retire", *tls, IOTDPS_SERVER_CA_PASSPHRASE=PASSPHRASE)
        assert done.returncode == 0, done.stderr
        assert "destroyed in the PKCS#11 token" in done.stdout and "object=rotating-cluster-ca" in done.stdout
        rotation = _rotation_record(dsn)
        assert rotation["retiring"] is None and rotation["retiring_key"] is None
        assert "PRIVATE KEY" not in json.dumps(rotation) + json.dumps(_server_ca_record(dsn))
        for node in (first, second):
            assert PIN not in node.log()
    finally:
        second.stop()
        first.stop()
