"""Our device client's TPM layer (iotdps.device.tpm, tpm2-pytss) against a real swtpm.

Known answers: the service's activation blob (tpm_crypto) goes into the TPM through
tpm2-pytss, and the TPM's HMAC must equal the service's HMAC with the key it kept. The keys
`provision_keys` creates on a fresh TPM are the ones tpm2-tools reads at the SDK handles.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotdps.attestation import tpm_crypto as tc
from iotdps.device.tpm import Tpm, TpmError
from iotdps_testing.swtpm import EK_HANDLE, SRK_HANDLE, Swtpm, running_swtpm

pytestmark = pytest.mark.e2e

_SR = "0ne00000001%2Fregistrations%2Ftpm-device-1"
_EXPIRY = 1_900_000_000


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    with running_swtpm(tmp_path / "tpm") as running:
        yield running


def test_reads_the_keys_tpm2_tools_provisioned(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        ek, srk = tpm.endorsement_key(), tpm.storage_root_key()
    assert ek == swtpm.ek_public
    assert srk == swtpm.srk_public


def test_imports_the_services_blob_and_signs_with_its_key(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        ek, srk = tc.parse_ek(tpm.endorsement_key()), tc.parse_srk(tpm.storage_root_key())
        challenge = tc.build_activation_blob(ek, srk)
        tpm.activate(challenge.blob)
        signature = tpm.sign(f"{_SR}\n{_EXPIRY}".encode())
        assert tc.sas_signature_matches(challenge.key, _SR, _EXPIRY, signature)
        # The hub blob replaces the key at 0x81000100.
        hub = tc.build_activation_blob(ek, srk)
        tpm.activate(hub.blob)
        assert tpm.sign(f"{_SR}\n{_EXPIRY}".encode()) == tc.sas_signature(hub.key, _SR, _EXPIRY)
    # tpm2-tools sees the same key: the import is the TPM's, not a cache of ours.
    assert swtpm.hmac(f"{_SR}\n{_EXPIRY}".encode()) == tc.sas_signature(hub.key, _SR, _EXPIRY)


def test_one_tpm_object_imports_again_and_again(swtpm: Swtpm) -> None:
    # Each registration (and each reprovisioning) imports two blobs into the same handle; a
    # long-lived ESAPI context used to refuse the third key ("name mismatch").
    with Tpm(swtpm.tcti) as tpm:
        ek, srk = tc.parse_ek(tpm.endorsement_key()), tc.parse_srk(tpm.storage_root_key())
        for _ in range(4):
            made = tc.build_activation_blob(ek, srk)
            tpm.activate(made.blob)
            assert tpm.sign(f"{_SR}\n{_EXPIRY}".encode()) == tc.sas_signature(made.key, _SR, _EXPIRY)


def test_a_blob_for_another_tpm_is_refused_by_the_tpm(swtpm: Swtpm, tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "other") as other:
        blob = tc.build_activation_blob(tc.parse_ek(other.ek_public), tc.parse_srk(other.srk_public)).blob
    with Tpm(swtpm.tcti) as tpm, pytest.raises(TpmError, match="refused the credential"):
        tpm.activate(blob)


def test_malformed_blobs_and_missing_keys_are_clear_errors(tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "fresh", provision=False) as fresh, Tpm(fresh.tcti) as tpm:
        with pytest.raises(TpmError, match=r"no endorsement key at 0x81010001"):
            tpm.endorsement_key()
        with pytest.raises(TpmError, match="no key imported yet"):
            tpm.sign(b"x")
        with pytest.raises(TpmError, match="truncated"):
            tpm.activate(b"\x00\x10abc")
        with pytest.raises(TpmError, match="trailing"):
            tpm.activate(b"\x00\x00" * 6 + b"!")


def test_provision_keys_creates_them_once_at_the_sdk_handles(tmp_path: Path) -> None:
    with running_swtpm(tmp_path / "fresh", provision=False) as fresh:
        with Tpm(fresh.tcti) as tpm:
            tpm.provision_keys()
            ek = tpm.endorsement_key()
            tpm.provision_keys()  # a second call leaves them alone
            assert tpm.endorsement_key() == ek
        assert fresh.read_public(EK_HANDLE) == ek
        parsed_ek = tc.parse_ek(ek)  # the service accepts it as an EK
        parsed_srk = tc.parse_srk(fresh.read_public(SRK_HANDLE))
        made = tc.build_activation_blob(parsed_ek, parsed_srk)
        fresh.activate(made.blob)  # and tpm2-tools can activate a blob made for them
        assert fresh.hmac(f"{_SR}\n{_EXPIRY}".encode()) == tc.sas_signature(made.key, _SR, _EXPIRY)


def test_opening_an_unreachable_tpm_is_a_clear_error() -> None:
    with pytest.raises(TpmError, match="cannot open the TPM"):
        Tpm("swtpm:host=127.0.0.1,port=1")
