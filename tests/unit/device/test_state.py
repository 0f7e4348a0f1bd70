"""The device client's assignment cache and credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from iotdps.device import Assignment, DeviceSettings, SymmetricKey, load_state, save_state
from iotdps.secret import Secret

KEY = base64.b64encode(b"k" * 32).decode()


def settings(tmp_path: Path, rid: str = "dev-1", scope: str = "0ne00000001") -> DeviceSettings:
    return DeviceSettings("dps.test", scope, rid, SymmetricKey(Secret(KEY)), tmp_path / "state" / "dev.json")


def test_state_round_trip_is_private_and_tied_to_the_identity(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert load_state(s) is None
    save_state(s, Assignment("dev-1", "hub-a.test", "dev-1", "initialAssignment"))
    assert load_state(s) == Assignment("dev-1", "hub-a.test", "dev-1", "initialAssignment")
    assert s.state_file.stat().st_mode & 0o777 == 0o600
    assert not list(s.state_file.parent.glob("*.tmp"))
    # Another registration id or scope does not reuse it.
    assert load_state(settings(tmp_path, rid="dev-2")) is None
    assert load_state(settings(tmp_path, scope="0ne00000002")) is None
    s.state_file.write_text("{not json")
    assert load_state(s) is None


def test_group_key_derivation_and_repr(tmp_path: Path) -> None:
    derived = SymmetricKey.from_group(Secret(KEY), "dev-9")
    expected = base64.b64encode(hmac.new(base64.b64decode(KEY), b"dev-9", hashlib.sha256).digest()).decode()
    assert derived.key.reveal() == expected
    assert KEY not in repr(SymmetricKey(Secret(KEY)))
    token = derived.hub_token("hub.test", "dev-9")
    assert token.startswith("SharedAccessSignature sr=hub.test%2Fdevices%2Fdev-9&sig=") and "skn" not in token
