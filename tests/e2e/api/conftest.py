"""A management API server over loopback TLS for the SDK tests (one per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key, issue_device_certificate
from iotdps.provisioning.records import RegistrationRecord
from iotdps_testing.mgmt import ManagementServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementServer]:
    srv = ManagementServer(tmp_path_factory.mktemp("mgmt")).start()
    try:
        yield srv
    finally:
        srv.stop()


class Pki:
    """A root CA and device certificates signed by it, as PEM text."""

    def __init__(self) -> None:
        self.key = generate_private_key()
        # Longer than the devices' 30 days: a device issued a second later must not outlive it.
        self.cert = create_root_ca("api-test-root", self.key, Validity.days(60))
        self.issuer = Issuer(self.cert, self.key)

    @property
    def ca_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def device_pem(self, registration_id: str) -> str:
        key = generate_private_key()
        cert = issue_device_certificate(self.issuer, registration_id, key.public_key(), Validity.days(30))
        return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def seed_registrations(server: ManagementServer, group: str | None, ids: list[str]) -> None:
    """Registration records as the register pipeline would leave them (for group devices when
    `group` is given, else for individual enrollments)."""

    async def go() -> None:
        assert server.store is not None
        async with server.store.begin() as uow:
            for rid in ids:
                await uow.registrations.put(
                    RegistrationRecord(
                        registration_id=rid,
                        status="assigned",
                        operation_id=f"5.op.{rid}",
                        substatus="initialAssignment",
                        assigned_hub="hub-1.example.net",
                        device_id=rid,
                        attestation_type="x509" if group else "symmetricKey",
                        enrollment_group_id=group,
                    )
                )

    server.call(go())


def ca_file(server: ManagementServer) -> Path:
    return server.ca_path
