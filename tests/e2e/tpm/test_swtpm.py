"""The swtpm test helper itself: a real TPM 2.0 on loopback, provisioned like the Azure SDKs expect."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from iotdps_testing.swtpm import EK_HANDLE, SRK_HANDLE, SwtpmError, require_binaries, running_swtpm

pytestmark = pytest.mark.e2e

_RSA = 0x0001
_SHA256 = 0x000B
# TCG default EK (template L-1): fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt
_EK_ATTRIBUTES = 0x000300B2
# The C and Node SDKs' SRK: the same but userWithAuth|noDA instead of adminWithPolicy
_SRK_ATTRIBUTES = 0x00030472
_EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


def _header(tpm2b_public: bytes) -> tuple[int, int, int, int]:
    size, key_type, name_alg, attributes = struct.unpack(">HHHI", tpm2b_public[:10])
    return size, key_type, name_alg, attributes


def test_provisions_ek_and_srk_at_the_sdk_handles_and_stops(tmp_path: Path) -> None:
    with running_swtpm(tmp_path) as tpm:
        ek, srk = tpm.ek_public, tpm.srk_public
        assert tpm.tcti == f"swtpm:host=127.0.0.1,port={tpm.port}"
        assert tpm.ctrl_port == tpm.port + 1
        # Persistent handles list straight from the TPM.
        handles = tpm.tool("tpm2_getcap", "handles-persistent").decode().lower()
        assert f"0x{EK_HANDLE:x}" in handles
        assert f"0x{SRK_HANDLE:x}" in handles
        process = tpm.process
    assert process.poll() == 0, "swtpm did not shut down cleanly through its control channel"

    size, key_type, name_alg, attributes = _header(ek)
    assert (size, key_type, name_alg, attributes) == (len(ek) - 2, _RSA, _SHA256, _EK_ATTRIBUTES)
    assert ek[10:12] == b"\x00\x20" and ek[12:44] == _EK_POLICY
    size, key_type, name_alg, attributes = _header(srk)
    assert (size, key_type, name_alg, attributes) == (len(srk) - 2, _RSA, _SHA256, _SRK_ATTRIBUTES)
    # Empty authPolicy, then AES-128-CFB, null scheme, 2048 bits (TPMS_RSA_PARMS).
    assert srk[10:22] == bytes.fromhex("000000060080004300100800")


def test_state_survives_a_restart_of_the_same_state_dir(tmp_path: Path) -> None:
    with running_swtpm(tmp_path) as tpm:
        ek = tpm.ek_public
    with running_swtpm(tmp_path, provision=False) as again:
        assert again.ek_public == ek


def test_two_instances_have_different_endorsement_keys(tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "a") as one, running_swtpm(tmp_path / "b") as two:
        assert one.port != two.port
        assert one.ek_public != two.ek_public


def test_missing_binaries_fail_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SwtpmError, match="apt-get install swtpm swtpm-tools tpm2-tools"):
        require_binaries()


def test_a_failing_tool_reports_its_stderr(tmp_path: Path) -> None:
    with running_swtpm(tmp_path, provision=False) as tpm, pytest.raises(SwtpmError, match="tpm2_readpublic"):
        tpm.read_public(EK_HANDLE)  # nothing provisioned: the handle does not exist
