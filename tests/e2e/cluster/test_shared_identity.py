"""One service, many nodes: every node on one PostgreSQL database presents the same identity.

Real `iotdps up` nodes on their own loopback addresses and a database of this test's own. The
second node finds the service the first one initialised and joins it: the same ID scope, the
same server CA presented on its TLS listeners, and the same access policies (a token signed
with the first node's key is accepted by the second). A node that would be a second identity
(a data dir of another service, no passphrase) refuses to start with one error line.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509

from iotdps.access import make_service_sas
from iotdps_testing.cluster import pg_database, start_node
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def dsn() -> Iterator[str]:
    with pg_database() as name:
        yield name


def _presented_chain(node: RunningServer, ca_file: Path) -> list[x509.Certificate]:
    """The chain the node's MQTT listener presents, verified against `ca_file`."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((node.address, 8883), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=node.address) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return [x509.load_der_x509_certificate(der)]


def _owner_key(node: RunningServer, policy: str = "provisioningserviceowner") -> str:
    doc = json.loads((node.data_dir / "access-policies.json").read_text())
    return next(p["primaryKey"] for p in doc["policies"] if p["keyName"] == policy)


def test_two_nodes_present_one_identity(tmp_path: Path, dsn: str) -> None:
    service = free_loopback_address()
    first = start_node(tmp_path, service_host=service, dsn=dsn)
    try:
        second = start_node(tmp_path, service_host=service, dsn=dsn)
        try:
            assert first.id_scope and first.id_scope == second.id_scope
            assert first.server_ca_path.read_bytes() == second.server_ca_path.read_bytes()
            # Each node's own server certificate, issued by the shared CA: the second node's TLS
            # verifies against the first node's CA file, and names its own address.
            for node in (first, second):
                (leaf,) = _presented_chain(node, first.server_ca_path)
                assert leaf.issuer == x509.load_pem_x509_certificate(first.server_ca_path.read_bytes()).subject
            # The first node's owner key, accepted by the second node's management API.
            key = _owner_key(first)
            assert _owner_key(second) == key
            for node in (first, second):
                token = make_service_sas(f"{node.address}:8443", "provisioningserviceowner", key)
                answer = requests.get(
                    f"https://{node.address}:8443/settings",
                    headers={"Authorization": token},
                    verify=str(first.server_ca_path),
                    timeout=30,
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["idScope"] == first.id_scope
            # The database holds the CA key and the policies sealed, never in the clear.
            assert "PRIVATE KEY" not in _secrets_text(dsn) and key not in _secrets_text(dsn)
        finally:
            second.stop()
    finally:
        first.stop()


def _secrets_text(dsn: str) -> str:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> str:
        engine = create_async_engine(dsn)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT name, value FROM service_secrets"))).all()
        finally:
            await engine.dispose()
        assert {r[0] for r in rows} == {"server-ca", "access-policies"}
        return "\n".join(r[1] for r in rows)

    return asyncio.run(read())


def test_a_node_never_becomes_a_second_identity(tmp_path: Path, dsn: str) -> None:
    service = free_loopback_address()
    first = start_node(tmp_path, service_host=service, dsn=dsn)
    try:
        # Without the passphrase the sealed identity cannot be opened: refused, not replaced.
        no_secret = start_node(
            tmp_path, service_host=service, dsn=dsn, env={"IOTDPS_SERVER_CA_PASSPHRASE": ""}, expect_failure=True
        )
        assert no_secret.process.returncode == 2
        assert "to join it, set IOTDPS_SERVER_CA_PASSPHRASE" in no_secret.log()
        wrong = start_node(
            tmp_path, service_host=service, dsn=dsn, env={"IOTDPS_SERVER_CA_PASSPHRASE": "wrong"}, expect_failure=True
        )
        assert wrong.process.returncode == 2
        assert "does not open with this node's IOTDPS_SERVER_CA_PASSPHRASE" in wrong.log()
        assert "Traceback" not in no_secret.log() + wrong.log()
    finally:
        first.stop()
    # A data dir that belongs to another service (its own CA) cannot join this one.
    with pg_database() as other_dsn:
        stranger = start_node(tmp_path / "other", service_host=service, dsn=other_dsn)
        stranger.stop()
    moved = start_node(tmp_path / "other", service_host=service, dsn=dsn, address=stranger.address, expect_failure=True)
    assert moved.process.returncode == 2
    assert "is not the server CA of the service in the database" in moved.log()
