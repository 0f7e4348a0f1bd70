"""The console's session table, login limiter and credential check, and the API's session hook
(`AccessPolicies.authorize`): pure code, a fake clock."""

from __future__ import annotations

import pytest

from iotdps.access import (
    CSRF_HEADER,
    SESSION_COOKIE,
    AccessPolicies,
    AccessPolicy,
    Permission,
    key_digest,
    make_service_sas,
)
from iotdps.errors import Forbidden, InvalidInput, Throttled, Unauthorized
from iotdps.secret import Secret
from iotdps.web.credentials import parse_credentials, prove
from iotdps.web.sessions import LoginLimiter, SessionTable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def policies() -> AccessPolicies:
    return AccessPolicies.generate()


def _key(policies: AccessPolicies, name: str, which: str = "primary") -> str:
    policy = policies.get(name)
    return (policy.primary_key if which == "primary" else policy.secondary_key).reveal()


# --------------------------------------------------------------------------- sessions


def test_a_session_lives_until_idle_or_absolute_timeout() -> None:
    clock = Clock()
    table = SessionTable(idle_seconds=60, absolute_seconds=300, clock=clock)
    sid, session = table.open({"p": "d"})
    assert len(sid) >= 43 and sid not in repr(table._sessions)  # keyed by its digest only
    for _ in range(4):
        clock.now += 59
        assert table.find(sid) is session  # each use restarts the idle timer
    clock.now += 61
    assert table.find(sid) is None  # idle
    sid, session = table.open({"p": "d"})
    for _ in range(6):
        clock.now += 50
        table.find(sid)
    assert table.find(sid) is None  # absolute limit, however busy
    assert table.find("no such session") is None and table.find(None) is None


def test_a_change_needs_the_sessions_own_csrf_token() -> None:
    table = SessionTable()
    sid, session = table.open({"p": "d"})
    other_sid, other = table.open({"p": "d"})
    assert table.proven(sid, None, change=False) == {"p": "d"}
    for wrong in (None, "", "x", other.csrf_token):
        with pytest.raises(Forbidden):
            table.proven(sid, wrong, change=True)
    assert table.proven(sid, session.csrf_token, change=True) == {"p": "d"}
    with pytest.raises(Unauthorized):
        table.proven("forged", session.csrf_token, change=False)
    assert table.close(sid) and not table.close(sid)
    with pytest.raises(Unauthorized):
        table.proven(sid, session.csrf_token, change=False)
    assert table.proven(other_sid, other.csrf_token, change=True)


def test_the_table_is_bounded() -> None:
    clock = Clock()
    table = SessionTable(max_sessions=3, clock=clock)
    first, _ = table.open({"p": "d"})
    second, _ = table.open({"p": "d"})
    table.open({"p": "d"})
    clock.now += 1
    table.find(first)  # recently used: kept
    table.open({"p": "d"})
    assert len(table) == 3
    assert table.find(first) is not None and table.find(second) is None


# --------------------------------------------------------------------------- login limiter


def test_failures_are_limited_per_address_and_age_out() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=3, window=100, clock=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(Throttled) as refused:
        limiter.check("10.0.0.1")
    assert 1 <= refused.value.retry_after <= 101
    limiter.check("10.0.0.2")  # another address is not affected
    clock.now += 101
    limiter.check("10.0.0.1")


def test_failures_from_many_addresses_hit_the_server_wide_limit() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=3, max_total=10, window=100, clock=clock)
    for n in range(10):
        limiter.check(f"10.0.1.{n}")
        limiter.failed(f"10.0.1.{n}")
    with pytest.raises(Throttled, match="on this server"):
        limiter.check("10.0.2.1")
    clock.now += 101
    limiter.check("10.0.2.1")


# --------------------------------------------------------------------------- credentials


def test_connection_strings_and_policy_keys_are_proven(policies: AccessPolicies) -> None:
    owner = _key(policies, "provisioningserviceowner")
    hub = _key(policies, "iothubowner", "secondary")
    creds = parse_credentials(
        {
            "credentials": [
                {
                    "connectionString": "HostName=h:8443;SharedAccessKeyName=provisioningserviceowner;"
                    f"SharedAccessKey={owner}"
                },
                {"policyName": "iothubowner", "key": hub},
            ]
        }
    )
    assert "SharedAccessKey" not in repr(creds) and owner not in repr(creds)
    proven = prove(policies, creds)
    assert proven == {"provisioningserviceowner": key_digest(owner), "iothubowner": key_digest(hub)}


@pytest.mark.parametrize(
    "doc",
    [
        {"policyName": "provisioningserviceowner", "key": "AAAA"},
        {"policyName": "nobody", "key": "AAAA"},
        {"connectionString": "HostName=h;SharedAccessKeyName=enrollmentread;SharedAccessKey=bm90IHRoZSBrZXk="},
    ],
)
def test_a_wrong_key_or_policy_is_one_answer(policies: AccessPolicies, doc: dict[str, str]) -> None:
    with pytest.raises(Unauthorized, match=r"^the policy name or key is not right$"):
        prove(policies, parse_credentials(doc))


@pytest.mark.parametrize(
    "doc",
    [[], {}, {"credentials": []}, {"credentials": [{}] * 6}, {"connectionString": "no equals"}, {"key": 5}],
)
def test_malformed_sign_in_bodies_are_400(doc: object) -> None:
    with pytest.raises(InvalidInput):
        parse_credentials(doc)


# --------------------------------------------------------------------------- the API's hook


def test_authorize_maps_a_session_to_its_policies_rights(policies: AccessPolicies) -> None:
    table = SessionTable()
    read = _key(policies, "enrollmentread")
    sid, session = table.open({"enrollmentread": key_digest(read)})
    cookies = {SESSION_COOKIE: sid}
    common = {"host_names": ("h",), "path": "/enrollments/x", "sessions": table}
    got = policies.authorize({}, cookies, "GET", needed=Permission.ENROLLMENT_READ, **common)
    assert got.name == "enrollmentread"
    with pytest.raises(Unauthorized, match="do not grant EnrollmentWrite"):
        policies.authorize(
            {CSRF_HEADER: session.csrf_token}, cookies, "PUT", needed=Permission.ENROLLMENT_WRITE, **common
        )
    with pytest.raises(Forbidden):
        policies.authorize({}, cookies, "POST", needed=Permission.ENROLLMENT_READ, **common)
    # A token, when sent, decides alone (the cookie is not consulted).
    token = make_service_sas("h", "enrollmentread", read)
    got = policies.authorize({"Authorization": token}, {SESSION_COOKIE: "junk"}, "GET", needed=None, **common)
    assert got.name == "enrollmentread"
    with pytest.raises(Unauthorized):
        policies.authorize({}, {}, "GET", needed=Permission.ENROLLMENT_READ, **common)


def test_a_rotated_key_ends_the_sessions_claim(policies: AccessPolicies) -> None:
    table = SessionTable()
    old = _key(policies, "provisioningserviceowner")
    sid, _ = table.open({"provisioningserviceowner": key_digest(old)})
    owner = policies.get("provisioningserviceowner")
    rotated = AccessPolicies(
        [
            AccessPolicy(
                owner.name, Secret("bmV3IHByaW1hcnkga2V5IDMyIGJ5dGVzIGxvbmcuLi4="), owner.secondary_key, owner.rights
            ),
        ]
    )
    with pytest.raises(Unauthorized):
        rotated.authorize(
            {},
            {SESSION_COOKIE: sid},
            "GET",
            host_names=("h",),
            path="/",
            needed=Permission.ENROLLMENT_READ,
            sessions=table,
        )
