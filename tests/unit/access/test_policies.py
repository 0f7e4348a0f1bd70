"""The shared access policies: access-policies.json (created 0600 once, upgraded with the hub
policies), their rights, connection strings (pure, no sockets)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from iotdps.access import (
    DEFAULT_POLICIES,
    HUB_OWNER_POLICY,
    HUB_RIGHTS,
    OWNER_POLICY,
    AccessPolicies,
)


@pytest.fixture(scope="module")
def policies() -> AccessPolicies:
    return AccessPolicies.generate()


def _key(policies: AccessPolicies, name: str = OWNER_POLICY) -> str:
    return policies.get(name).primary_key.reveal()


def test_load_or_create_writes_0600_once_and_reloads(tmp_path: Path) -> None:
    first = AccessPolicies.load_or_create(tmp_path / "data")
    path = tmp_path / "data" / "access-policies.json"
    assert first.just_created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = AccessPolicies.load_or_create(tmp_path / "data")
    assert not again.just_created and again.fresh_names == ()
    assert set(first.fresh_names) == set(first.names)
    assert _key(again) == _key(first)
    assert set(again.names) == {OWNER_POLICY, "enrollmentread", "enrollmentwrite", HUB_OWNER_POLICY, "service"}
    doc = json.loads(path.read_text())
    owner = next(p for p in doc["policies"] if p["keyName"] == OWNER_POLICY)
    assert (
        owner["rights"]
        == "ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite"
    )
    assert _key(first) not in repr(first) and _key(first) not in repr(first.get(OWNER_POLICY))
    hub_owner = next(p for p in doc["policies"] if p["keyName"] == HUB_OWNER_POLICY)
    assert hub_owner["rights"] == "RegistryRead, RegistryWrite, ServiceConnect"


def test_an_older_policy_file_gains_the_hub_policies_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "access-policies.json"
    dps_only = {name: rights for name, rights in DEFAULT_POLICIES.items() if not rights & HUB_RIGHTS}
    AccessPolicies.generate(dps_only).save(path)
    before = json.loads(path.read_text())
    upgraded = AccessPolicies.load_or_create(data)
    assert not upgraded.just_created and set(upgraded.fresh_names) == {HUB_OWNER_POLICY, "service"}
    after = json.loads(path.read_text())
    # Every policy that was there is kept, keys unchanged; the hub policies are added.
    assert after["policies"][: len(before["policies"])] == before["policies"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AccessPolicies.load_or_create(data).fresh_names == ()


def test_connection_string(policies: AccessPolicies) -> None:
    cs = policies.connection_string("enrollmentread", "dps.example.net:8443")
    key = _key(policies, "enrollmentread")
    assert cs == f"HostName=dps.example.net:8443;SharedAccessKeyName=enrollmentread;SharedAccessKey={key}"
