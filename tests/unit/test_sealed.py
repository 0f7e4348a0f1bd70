"""Sealed shared secrets: they open with the passphrase and name they were sealed with, only."""

from __future__ import annotations

import pytest

from iotdps.errors import ConfigError
from iotdps.sealed import open_sealed, seal
from iotdps.secret import Secret


def test_seal_round_trip_and_refusals() -> None:
    key = Secret("correct horse")
    sealed = seal("server-ca", b"the CA key", key)
    assert b"the CA key" not in sealed.encode() and sealed.startswith("v1.")
    assert open_sealed("server-ca", sealed, key) == b"the CA key"
    assert seal("server-ca", b"the CA key", key) != sealed  # fresh salt and nonce each time
    with pytest.raises(ConfigError, match="does not open"):
        open_sealed("server-ca", sealed, Secret("wrong"))
    with pytest.raises(ConfigError, match="does not open"):
        open_sealed("access-policies", sealed, key)  # moved under another name
    with pytest.raises(ConfigError, match="damaged"):
        open_sealed("server-ca", "v1.!!!", key)
    with pytest.raises(ConfigError, match="known format"):
        open_sealed("server-ca", "plain text", key)
