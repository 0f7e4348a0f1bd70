"""`iotdps sas-token` and `iotdps group compute-device-key` (issue 17): each token is checked by
the verifier that will meet it (the hub's CONNECT check, DPS's token check, the management
API's), and the derived key against an independent HMAC (iotdps_testing.devcerts)."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from iotdps.access.rights import AccessPolicy, Permission
from iotdps.access.tokens import verify_token
from iotdps.cli.main import main
from iotdps.hub.auth import check_device
from iotdps.hub.devices import DeviceAuth, DeviceIdentity
from iotdps.sas import SasToken, check_token, parse_sas, signature_matches
from iotdps.secret import Secret
from iotdps_testing.devcerts import derived_key


def _iotdps(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with CliRunner().isolation(env=env or {}) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, out.getvalue().decode().strip(), err.getvalue().decode().strip()


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_hub_device_token_is_admitted_by_the_hub() -> None:
    key, group_key = _key(), _key()
    code, token, _ = _iotdps("sas-token", "--hub", "hub1.local", "--device", "dev-7", "--key", key)
    assert code == 0
    device = DeviceIdentity("hub1.local", "dev-7", DeviceAuth("sas", Secret(key), Secret(_key())))
    assert check_device(device, "hub1.local", token.encode(), None, datetime.now(UTC)) is None
    # --group-key: the device's key is derived from the group's, as the device does.
    code, token, _ = _iotdps("sas-token", "--hub", "hub1.local", "--device", "dev-7", "--group-key", group_key)
    assert code == 0
    grouped = DeviceIdentity("hub1.local", "dev-7", DeviceAuth("sas", Secret(derived_key(group_key, "dev-7"))))
    assert check_device(grouped, "hub1.local", token.encode(), None, datetime.now(UTC)) is None


def test_dps_token_passes_the_registration_check() -> None:
    group_key = _key()
    code, text, _ = _iotdps(
        "sas-token", "--id-scope", "0ne00AB", "--registration-id", "dev-8", "--group-key", group_key, "--ttl", "600"
    )
    assert code == 0
    token = parse_sas(text)
    assert isinstance(token, SasToken)
    assert check_token(token, "0ne00AB", "dev-8", datetime.now(UTC)) is None
    assert signature_matches(token, derived_key(group_key, "dev-8"))
    assert token.expiry <= int(time.time()) + 600


def test_policy_token_is_accepted_by_the_management_api() -> None:
    key = _key()
    code, token, _ = _iotdps(
        "sas-token", "--policy", "ops", "--key", key, env={"IOTDPS_SERVER": "https://mgmt.example:8443"}
    )
    assert code == 0
    policy = AccessPolicy("ops", Secret(key), Secret(_key()), frozenset({Permission.ENROLLMENT_READ}))
    found = verify_token(
        {"ops": policy},
        token,
        host_names=["mgmt.example"],
        path="/enrollments",
        needed=Permission.ENROLLMENT_READ,
        now=time.time(),
    )
    assert found.name == "ops"


def test_compute_device_key_from_the_key_and_from_the_group(tmp_path: Path) -> None:
    group_key = _key()
    code, out, _ = _iotdps("group", "compute-device-key", "--group-key", group_key, "--registration-id", "dev-9")
    assert (code, out) == (0, derived_key(group_key, "dev-9"))

    env = {"IOTDPS_DATA_DIR": str(tmp_path / "data")}
    assert _iotdps("group", "create", "fleet", "--symmetric-key", "--primary-key", group_key, env=env)[0] == 0
    code, out, _ = _iotdps("group", "compute-device-key", "fleet", "--registration-id", "dev-9", env=env)
    assert (code, out) == (0, derived_key(group_key, "dev-9"))
    assert _iotdps("group", "compute-device-key", "nosuch", "--registration-id", "dev-9", env=env)[0] == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("sas-token",), "say which token"),
        (("sas-token", "--hub", "h", "--device", "d"), "give the device's --key, or --group-key"),
        (("sas-token", "--hub", "h", "--device", "d", "--key", "not base64!"), "--key is not base64"),
        (("sas-token", "--policy", "p", "--key", "AAAA"), "needs --host"),
        (("sas-token", "--id-scope", "s", "--registration-id", "bad/id", "--key", "AAAA"), "bad/id"),
        (("group", "compute-device-key", "--registration-id", "d"), "give GROUP_ID"),
    ],
)
def test_bad_input_is_one_error_line_exit_2(args: tuple[str, ...], words: str) -> None:
    code, out, err = _iotdps(*args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1
