"""Two `iotdps up` nodes on one PostgreSQL database: what one node enrolls, the other provisions.

Each test run gets its own database (created here, dropped at the end) so parallel runs and
the store contract suite never share tables.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from azure.iot.device import ProvisioningDeviceClient

from iotdps_testing.server import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def database() -> Iterator[str]:
    name = f"iotdps_e2e_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed (.ci/run starts it): {exc}")
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_nodes_share_one_postgresql_store(tmp_path: Path, database: str) -> None:
    # The second node joins the service the first initialised (wiring/shared_identity.py): it
    # needs the passphrase that seals the shared server CA and policies in the database.
    env = {"IOTDPS_DSN": database, "IOTDPS_SERVER_CA_PASSPHRASE": secrets.token_urlsafe(24)}
    # One after the other: the first node creates the schema, the ID scope and the identity.
    node_a = start_server(tmp_path / "a", env=env)
    node_b = start_server(tmp_path / "b", env=env)
    try:
        assert node_a.id_scope == node_b.id_scope
        assert node_a.server_ca == node_b.server_ca
        node_a.env["IOTDPS_DSN"] = database
        node_b.env["IOTDPS_DSN"] = database
        node_a.cli("enrollment", "create", "pg-dev-1", "--symmetric-key")
        keys = node_a.cli_json("enrollment", "show", "pg-dev-1", "--show-keys")["attestation"]["symmetricKey"]
        # The device talks to node B only.
        result = ProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=node_b.address,
            registration_id="pg-dev-1",
            id_scope=node_b.id_scope,
            symmetric_key=keys["primaryKey"],
            server_verification_cert=node_b.server_ca,
        ).register()
        assert result.status == "assigned"
        # Node A's operator sees the record node B wrote.
        record = node_a.cli_json("registration", "show", "pg-dev-1")
        assert record["status"] == "assigned"
        assert record["deviceId"] == "pg-dev-1"
        assert record["assignedHub"] == result.registration_state.assigned_hub
    finally:
        assert node_b.stop() == 0, node_b.log()
        assert node_a.stop() == 0, node_a.log()
