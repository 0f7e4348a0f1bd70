"""What a registration costs PostgreSQL in round trips, counted by asyncpg itself.

Each round trip is a send, a wake-up of the event loop and a backend's turn: on the registration
path they were most of the server's CPU beyond the TLS handshake (bench/PROFILE.md). The
configuration version rides on each unit's first keyed read instead of a statement of its own.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import event

from iotdps.allocation.hubs import LinkedHub
from iotdps.audit import Actor
from iotdps.enrollment.models import EnrollmentGroup
from iotdps.evidence import SasCredential
from iotdps.provisioning.admin import put_group
from iotdps.provisioning.registration import RegistrationRequest
from iotdps.provisioning.service import ProvisioningService
from iotdps.provisioning.settings import ServiceSettings
from iotdps.sas import derive_device_key, make_sas_token
from iotdps.secret import Secret
from iotdps.store import SqlStore, open_store

from .conftest import PG_DSN

pytestmark = pytest.mark.postgres

SCOPE = "0ne00ROUND0"


async def test_a_registration_takes_eight_round_trips(pg_schema: str) -> None:
    store = await open_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, SqlStore)
    sent: list[str] = []

    @event.listens_for(store.engine.sync_engine, "connect")  # type: ignore[union-attr]
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda query: sent.append(query.query))

    try:
        await store.engine.dispose()  # type: ignore[union-attr]  # new sessions, with the logger
        async with store.begin() as uow:
            await uow.settings.put(ServiceSettings(SCOPE))
            await uow.hubs.put(LinkedHub("hub.round.example", 1, True))
        group = await put_group(
            store,
            EnrollmentGroup.from_json({"enrollmentGroupId": "round", "attestation": {"type": "symmetricKey"}}),
            actor=Actor("local", "test"),
        )
        assert group.attestation.symmetric_key is not None
        key = group.attestation.symmetric_key.primary_key.reveal()
        service = ProvisioningService(store)

        async def register(rid: str) -> None:
            token = make_sas_token(SCOPE, rid, derive_device_key(key, rid), int(time.time()) + 600)
            credential = SasCredential(Secret(token))
            auth = await service.authenticate(SCOPE, rid, credential)
            outcome = await service.register(RegistrationRequest(SCOPE, rid, credential, authentication=auth))
            assert outcome.status == "assigned"

        await register("round-0")  # fills the node's cache of settings, hubs and the group
        sent.clear()
        await register("round-1")
    finally:
        await store.close()
    words = [query.split(None, 1)[0].upper().rstrip(";") for query in sent]
    # Authenticate: the individual enrollment with the version (one statement). Register:
    # BEGIN, the id's lock, the record with the version, the device, two upserts, COMMIT.
    # There were ten: each unit read the version by itself.
    assert len(sent) == 8, sent
    assert words.count("BEGIN") == 1 and words.count("COMMIT") == 1
    assert sum("config_version" in query for query in sent) == 2
