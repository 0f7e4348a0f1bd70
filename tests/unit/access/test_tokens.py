"""The SharedAccessSignature check: every `sr` form the SDKs send, path scopes, and refusals
that say why without secrets (pure, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote, quote_plus, urlencode

import pytest

from iotdps.access import (
    OWNER_POLICY,
    AccessPolicies,
    Permission,
    make_service_sas,
)
from iotdps.errors import Unauthorized

HOSTS = ("dps.example.net", "127.0.0.1")


@pytest.fixture(scope="module")
def policies() -> AccessPolicies:
    return AccessPolicies.generate()


def _key(policies: AccessPolicies, name: str = OWNER_POLICY) -> str:
    return policies.get(name).primary_key.reveal()


def _sign(key: str, signed: str, expiry: int) -> str:
    mac = hmac.new(base64.b64decode(key), f"{signed}\n{expiry}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@pytest.mark.parametrize(
    "sr",
    [
        "dps.example.net",
        "dps.example.net:8443",
        "https://dps.example.net:8443",
        "https://127.0.0.1:9999/",
        "DPS.example.net",
    ],
)
def test_every_sr_form_the_sdks_send(policies: AccessPolicies, sr: str) -> None:
    expiry = int(time.time()) + 600
    key = _key(policies)
    # azure-iot-deviceprovisioning: urlencode of the whole token, quote_plus(sr) signed.
    token = "SharedAccessSignature " + urlencode(
        {"sr": sr, "sig": _sign(key, quote_plus(sr), expiry), "se": expiry, "skn": OWNER_POLICY}
    )
    found = policies.authenticate(token, host_names=HOSTS, path="/enrollments/x", needed=Permission.ENROLLMENT_WRITE)
    assert found.name == OWNER_POLICY
    # azure-iothub-provisioningserviceclient: quote_plus(sr) sent, signature percent-quoted (safe '/').
    sig = quote(_sign(key, quote_plus(sr), expiry))
    legacy = f"SharedAccessSignature sr={quote_plus(sr)}&sig={sig}&se={expiry}&skn={OWNER_POLICY}"
    assert policies.authenticate(legacy, host_names=HOSTS, path="/enrollments/x", needed=None).name == OWNER_POLICY
    # A client that signs the lower-cased encoded resource.
    low_sig = quote_plus(_sign(key, quote_plus(sr).lower(), expiry))
    lowered = f"SharedAccessSignature sr={quote_plus(sr)}&sig={low_sig}&se={expiry}&skn={OWNER_POLICY}"
    assert policies.authenticate(lowered, host_names=HOSTS, path="/", needed=None).name == OWNER_POLICY


def test_secondary_key_and_helper(policies: AccessPolicies) -> None:
    secondary = policies.get(OWNER_POLICY).secondary_key.reveal()
    token = make_service_sas("dps.example.net", OWNER_POLICY, secondary)
    assert policies.authenticate(token, host_names=HOSTS, path="/certificates", needed=Permission.SERVICE_CONFIG)


def test_path_scope_is_segment_wise(policies: AccessPolicies) -> None:
    token = make_service_sas("dps.example.net/enrollments", OWNER_POLICY, _key(policies))
    assert policies.authenticate(token, host_names=HOSTS, path="/enrollments/dev-1", needed=None)
    for path in ("/enrollmentGroups/g", "/enrollmentsX/dev-1", "/"):
        with pytest.raises(Unauthorized):
            policies.authenticate(token, host_names=HOSTS, path=path, needed=None)


@pytest.mark.parametrize(
    ("make", "needed", "words"),
    [
        (lambda p: None, None, "Authorization header"),
        (lambda p: "Bearer abc", None, "not a SharedAccessSignature"),
        (lambda p: "SharedAccessSignature sr=dps.example.net&sig=x", None, "needs sr, sig, se and skn"),
        (lambda p: make_service_sas("dps.example.net", OWNER_POLICY, _key(p), ttl=-5), None, "expired"),
        (lambda p: make_service_sas("dps.example.net", OWNER_POLICY, _key(p), ttl=10 * 366 * 86400), None, "too far"),
        (lambda p: make_service_sas("other.example.net", OWNER_POLICY, _key(p)), None, "not valid"),
        (lambda p: make_service_sas("dps.example.net", "nobody", _key(p)), None, "not valid"),
        (lambda p: make_service_sas("dps.example.net", OWNER_POLICY, _key(p, "enrollmentread")), None, "not valid"),
        (
            lambda p: make_service_sas("dps.example.net", "enrollmentread", _key(p, "enrollmentread")),
            Permission.ENROLLMENT_WRITE,
            "does not grant EnrollmentWrite",
        ),
    ],
)
def test_refusals_say_why_without_secrets(policies: AccessPolicies, make, needed, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized) as refused:
        policies.authenticate(make(policies), host_names=HOSTS, path="/enrollments/x", needed=needed)
    assert words in refused.value.message
    assert all(_key(policies, n) not in refused.value.message for n in policies.names)
