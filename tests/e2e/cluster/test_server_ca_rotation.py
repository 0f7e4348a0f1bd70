"""Rotating the server CA of a service of several nodes (wiring/shared_rotation.py), end to end.

Real `iotdps up` nodes on one PostgreSQL database of this test's own. Each step is run on one
node's data dir and the others follow without a restart: after `rotate` on A, B's registrations
carry the bundle with both CAs; after `activate` on A, A and B each present a certificate of
their own from the new CA (seen in a real handshake); a device holding the bundle registers
through either node, a device holding only the old CA is refused; `retire`, run on B, leaves
the new CA alone everywhere. A node that was down during activation presents the new CA when
it comes back; a node with another passphrase cannot follow the rotation.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from iotdps.pki import load_certificates
from iotdps.sas import make_sas_token
from iotdps_testing.cluster import PASSPHRASE, enroll_symmetric_key, pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import SRC, RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

API = "2025-07-01-preview"  # its answers carry the trust bundle (pki/issuance_wire.py)
WAIT = 30.0  # a node follows a step within its poll (3 s) and the certificate reload (2.5 s)


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


def _pem(certs: list[x509.Certificate]) -> str:
    from cryptography.hazmat.primitives import serialization

    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _presented(node: RunningServer, ca_pem: str) -> x509.Certificate:
    """The leaf the node's MQTT port presents to a client trusting `ca_pem` only (raises when
    the handshake fails, as a device's would)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    with (
        socket.create_connection((node.address, 8883), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=node.address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            result = check()
            if result:
                return result
        except (ssl.SSLError, OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.5)


def _register(node: RunningServer, rid: str, key: str, ca_pem: str, tmp: Path) -> dict[str, Any]:
    """A raw HTTPS registration with the api-version whose answers carry the trust bundle,
    trusting `ca_pem` only (raises when the handshake fails); the final registrationState."""
    ca_file = tmp / f"trust-{secrets.token_hex(4)}.pem"
    ca_file.write_text(ca_pem)
    token = make_sas_token(node.id_scope, rid, key, int(time.time()) + 600)
    base = f"https://{node.address}/{node.id_scope}/registrations/{rid}"
    headers = {"Authorization": token}
    response = requests.put(
        f"{base}/register?api-version={API}",
        json={"registrationId": rid},
        headers=headers,
        verify=str(ca_file),
        timeout=30,
    )
    deadline = time.monotonic() + WAIT
    while response.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.2)
        operation = response.json()["operationId"]
        response = requests.get(
            f"{base}/operations/{operation}?api-version={API}", headers=headers, verify=str(ca_file), timeout=30
        )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    assert doc["status"] == "assigned", json.dumps(doc)
    state: dict[str, Any] = doc["registrationState"]
    return state


def _bundle(state: dict[str, Any]) -> list[x509.Certificate] | None:
    bundle = state.get("trustBundle")
    if bundle is None:
        return None
    return [x509.load_pem_x509_certificate(str(c["certificate"]).encode()) for c in bundle["certificates"]]


def _bundle_file(node: RunningServer) -> list[x509.Certificate]:
    return load_certificates((node.data_dir / "tls" / "ca-bundle.pem").read_bytes())


def _iotdps(node: RunningServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command line, for exit codes and the `error:` line."""
    full = {**os.environ, "PYTHONPATH": str(SRC), **node.env, **env}
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args], capture_output=True, text=True, timeout=60, env=full, check=False
    )


def _status(node: RunningServer) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(node.cli("tls", "rotation", "status", "--json"))
    return doc


def test_a_rotation_reaches_every_node(tmp_path: Path, dsn: str) -> None:
    service = free_loopback_address()
    env = {"IOTDPS_DSN": dsn, "IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE}
    a = start_node(tmp_path, service_host=service, dsn=dsn)
    b = start_node(tmp_path, service_host=service, dsn=dsn)
    c = start_node(tmp_path, service_host=service, dsn=dsn)
    nodes = [a, b, c]
    try:
        for node in nodes:
            node.env.update(env)
        old_pem = a.server_ca
        old = x509.load_pem_x509_certificate(old_pem.encode())
        keys = {rid: asyncio.run(enroll_symmetric_key(dsn, rid)) for rid in ("holder", "laggard")}
        assert _bundle(_register(a, "laggard", keys["laggard"], old_pem, tmp_path)) is None  # no rotation yet

        out = a.cli("tls", "rotate")
        assert "iotdps-server-ca version 1 carries both" in out and "every node" in out
        # B answers with the bundle at once: it is a record of the shared store.
        bundle = _bundle(_register(b, "holder", keys["holder"], old_pem, tmp_path))
        assert bundle is not None and bundle[0] == old and len(bundle) == 2
        new = bundle[1]
        assert _presented(b, old_pem).issuer == old.subject  # nothing presented changed
        # B's bundle file follows too; its status, read from the database, is the service's.
        _eventually(lambda: _bundle_file(b) == [old, new], "B's ca-bundle.pem carries both CAs")
        status = _status(b)
        assert status["phase"] == "pending"
        assert [d["registrationId"] for d in status["devicesWithoutNewCa"]] == ["laggard"]

        # C is down (killed: a clean stop would end the hub's serving lease for every node until
        # the next renewal, wiring/hub_leases.py) while the new CA is activated on A; A and B
        # switch without a restart.
        c.process.kill()
        c.process.wait(10)
        a.cli("tls", "activate", "--force")
        for node in (a, b):
            leaf = _eventually(lambda n=node: _presented(n, _pem([new])), f"{node.address} presents the new CA")
            assert leaf.issuer == new.subject
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert node.address in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]  # its own names
            assert node.process.poll() is None and "server certificate reloaded" in node.log()
        assert _status(a)["phase"] == "activated"

        # The device that received the bundle registers through either node; the laggard is
        # refused at the handshake.
        for node in (a, b):
            assert _register(node, "holder", keys["holder"], _pem(bundle), tmp_path)["assignedHub"]
        with pytest.raises(ssl.SSLCertVerificationError):
            _presented(b, old_pem)

        # C comes back with its data dir from before the activation and presents the new CA.
        c = start_node(tmp_path, service_host=service, dsn=dsn, address=c.address)
        nodes[2] = c
        c.env.update(env)
        assert _presented(c, _pem([new])).issuer == new.subject
        assert _bundle_file(c) == [old, new]

        # Retire, on B this time: the old CA leaves the bundle and every node's files.
        out = b.cli("tls", "retire")
        assert "version 2 carries" in out
        assert _bundle(_register(c, "holder", keys["holder"], _pem(bundle), tmp_path)) == [new]
        for node in nodes:
            _eventually(lambda n=node: _bundle_file(n) == [new], f"{node.address}'s bundle file is the new CA only")
            assert not (node.data_dir / "tls" / "retiring").exists()
        assert _status(c)["phase"] == "none"
    finally:
        for node in nodes:
            node.stop()


def test_a_node_with_another_passphrase_cannot_follow(tmp_path: Path, dsn: str) -> None:
    service = free_loopback_address()
    a = start_node(tmp_path, service_host=service, dsn=dsn)
    try:
        a.env.update({"IOTDPS_DSN": dsn, "IOTDPS_SERVER_CA_PASSPHRASE": PASSPHRASE})
        a.cli("tls", "rotate")
        refused = _iotdps(a, "tls", "activate", "--force", IOTDPS_SERVER_CA_PASSPHRASE="not the service's")
        assert refused.returncode == 2
        assert refused.stderr.splitlines()[1:] == [
            "  - the shared secret 'server-ca' in the database does not open with this node's "
            "IOTDPS_SERVER_CA_PASSPHRASE: give every node the passphrase of the node that initialised the service"
        ]
        assert "Traceback" not in refused.stderr
        wrong = start_node(
            tmp_path,
            service_host=service,
            dsn=dsn,
            env={"IOTDPS_SERVER_CA_PASSPHRASE": "not the service's"},
            expect_failure=True,
        )
        assert wrong.process.returncode == 2
        assert "does not open with this node's IOTDPS_SERVER_CA_PASSPHRASE" in wrong.log()
        assert "Traceback" not in wrong.log()
        assert _status(a)["phase"] == "pending"  # nothing changed
    finally:
        a.stop()
