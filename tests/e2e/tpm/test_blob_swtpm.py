"""Known-answer tests: the service's activation blob against a real TPM 2.0 (swtpm + tpm2-tools).

The blob is built by iotdps.attestation.tpm_crypto from nothing but the EK and SRK public areas
the TPM hands out; the TPM then does what the Azure C and Node SDKs do with it (ActivateCredential
under the EK policy, Import under the SRK, Load, persist at 0x81000100) and HMACs a SAS string
with the imported key. The TPM's HMAC must equal the one the service computes with the key it
kept: that is the proof that the blob is right. The negative cases show that the TPM, not our
code, refuses a blob made for another TPM or altered in transit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotdps.attestation import tpm_crypto as tc
from iotdps_testing.swtpm import EK_HANDLE, SRK_HANDLE, Swtpm, SwtpmError, running_swtpm

pytestmark = pytest.mark.e2e

_SR = "0ne00000001%2Fregistrations%2Ftpm-device-1"
_EXPIRY = 1_900_000_000


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[Swtpm]:
    with running_swtpm(tmp_path / "tpm") as running:
        yield running


def _keys(tpm: Swtpm) -> tuple[tc.RsaTpmKey, tc.RsaTpmKey]:
    return tc.parse_ek(tpm.ek_public), tc.parse_srk(tpm.srk_public)


def _sas_message(sr: str = _SR, expiry: int = _EXPIRY) -> bytes:
    return f"{sr}\n{expiry}".encode()


def test_tpm_imports_the_blob_and_signs_with_the_service_key(tpm: Swtpm) -> None:
    ek, srk = _keys(tpm)
    made = tc.build_activation_blob(ek, srk)
    tpm.activate(made.blob)
    signature = tpm.hmac(_sas_message())
    assert signature == tc.sas_signature(made.key, _SR, _EXPIRY)
    assert tc.sas_signature_matches(made.key, _SR, _EXPIRY, signature)
    # A software HMAC with any other key (a guess) does not pass the service's check.
    assert not tc.sas_signature_matches(bytes(32), _SR, _EXPIRY, signature)


def test_second_blob_replaces_the_id_key_as_the_hub_key(tpm: Swtpm) -> None:
    """registrationState.tpm.authenticationKey (3.2 step 5): imported again, it becomes the hub key."""
    ek, srk = _keys(tpm)
    challenge = tc.build_activation_blob(ek, srk)
    tpm.activate(challenge.blob)
    hub = tc.build_activation_blob(ek, srk)
    tpm.activate(hub.blob)
    message = b"hub.example%2Fdevices%2Ftpm-device-1\n1900000000"
    assert tpm.hmac(message) == tc.sas_signature(hub.key, "hub.example%2Fdevices%2Ftpm-device-1", _EXPIRY)
    assert tpm.hmac(message) != tc.sas_signature(challenge.key, "hub.example%2Fdevices%2Ftpm-device-1", _EXPIRY)


def test_the_blob_with_encrypted_data_still_imports(tpm: Swtpm) -> None:
    ek, srk = _keys(tpm)
    made = tc.build_activation_blob(ek, srk, encrypted_data=b"https://hub.example/")
    tpm.activate(made.blob)
    assert tpm.hmac(_sas_message()) == tc.sas_signature(made.key, _SR, _EXPIRY)


def test_names_agree_with_the_tpm(tpm: Swtpm) -> None:
    """object_name over the TPMT_PUBLIC is the name the TPM itself reports (and binds credentials to)."""
    for handle, parse in ((EK_HANDLE, tc.parse_ek), (SRK_HANDLE, tc.parse_srk)):
        tpm.tool("tpm2_readpublic", "-c", f"0x{handle:08x}", "-o", "pub.bin", "-n", "name.bin")
        public = (tpm.work_dir / "pub.bin").read_bytes()
        assert parse(public).name == (tpm.work_dir / "name.bin").read_bytes()


def test_duplicate_policy_digest_agrees_with_the_tpm(tpm: Swtpm) -> None:
    tpm.tool("tpm2_startauthsession", "-S", "trial.ctx")  # a trial session only computes the digest
    try:
        tpm.tool("tpm2_policycommandcode", "-S", "trial.ctx", "-L", "policy.bin", "TPM2_CC_Duplicate")
    finally:
        tpm.tool("tpm2_flushcontext", "trial.ctx")
    assert (tpm.work_dir / "policy.bin").read_bytes() == tc.policy_command_code_digest(tc.TPM_CC_DUPLICATE)


def test_a_blob_for_another_tpm_does_not_import(tmp_path: Path) -> None:
    """A different TPM claiming an enrolled device cannot use the challenge: it lacks that EK."""
    with running_swtpm(tmp_path / "enrolled") as enrolled, running_swtpm(tmp_path / "other") as other:
        enrolled_ek, enrolled_srk = _keys(enrolled)
        other_ek, other_srk = _keys(other)
        with pytest.raises(SwtpmError, match="tpm2_activatecredential"):
            other.activate(tc.build_activation_blob(enrolled_ek, enrolled_srk).blob)
        # Its own EK but the enrolled device's SRK: the credential is bound to a name it cannot load.
        with pytest.raises(SwtpmError, match="tpm2_activatecredential"):
            other.activate(tc.build_activation_blob(other_ek, enrolled_srk).blob)
        # Its own EK and SRK: fine (the control case for both refusals above).
        other.activate(tc.build_activation_blob(other_ek, other_srk).blob)


@pytest.mark.parametrize(
    ("field", "offset", "refused_by"),
    [
        pytest.param(0, 10, "tpm2_activatecredential", id="credential-hmac"),
        pytest.param(0, -1, "tpm2_activatecredential", id="encrypted-identity"),
        pytest.param(2, 10, "tpm2_import", id="duplicate-outer-hmac"),
        pytest.param(2, -1, "tpm2_import", id="duplicate-sensitive"),
        pytest.param(4, -1, "tpm2_import", id="id-key-public"),
    ],
)
def test_an_altered_blob_is_refused_by_the_tpm(tpm: Swtpm, field: int, offset: int, refused_by: str) -> None:
    ek, srk = _keys(tpm)
    parts = tc.split_activation_blob(tc.build_activation_blob(ek, srk).blob)
    fields = [parts.id_object, parts.encrypted_secret, parts.duplicate, parts.encrypted_seed, parts.public]
    target = bytearray(fields[field])
    target[offset] ^= 0x01
    fields[field] = bytes(target)
    with pytest.raises(SwtpmError, match=refused_by):
        tpm.activate(b"".join(fields) + parts.encrypted_data)
