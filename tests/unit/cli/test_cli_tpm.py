"""TPM enrollments and explain at the CLI, on a real SQLite data dir; bad keys are one-line errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from iotdps.cli.main import cli
from iotdps_testing.soft_tpm import EK_ATTRS, EK_POLICY, SoftTpm, rsa_tpm2b_public

SRC = str(Path(__file__).resolve().parents[3] / "src")


def _run(tmp_path: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(
        cli, list(args), env={"IOTDPS_DATA_DIR": str(tmp_path / "data")}, catch_exceptions=False
    )
    assert result.exit_code == code, result.output
    return result.output


def test_tpm_enrollment_from_base64_and_from_a_binary_file(tmp_path: Path) -> None:
    tpm, other = SoftTpm(0), SoftTpm(1)
    _run(tmp_path, "settings", "set", "--id-scope", "0ne00CLI")
    _run(tmp_path, "enrollment", "create", "tpm-1", "--endorsement-key", tpm.ek_b64, "--storage-root-key", tpm.srk_b64)
    ek_file = tmp_path / "ek.pub"
    ek_file.write_bytes(other.ek_public)  # what `tpm2_readpublic -o` writes
    _run(tmp_path, "enrollment", "create", "tpm-2", "--endorsement-key", str(ek_file))
    shown = json.loads(_run(tmp_path, "enrollment", "show", "tpm-2", "--show-keys"))
    assert shown["attestation"] == {"type": "tpm", "tpm": {"endorsementKey": other.ek_b64}}
    assert "tpm" in _run(tmp_path, "enrollment", "list")

    matched = _run(tmp_path, "explain", "--registration-id", "tpm-1", "--endorsement-key", tpm.ek_b64)
    assert "endorsement key matches" in matched and "gets the challenge" in matched
    wrong = _run(tmp_path, "explain", "--registration-id", "tpm-1", "--endorsement-key", str(ek_file), code=1)
    assert "TPM_EK_MISMATCH" in wrong and "another TPM's" in wrong


def test_bad_endorsement_keys_are_one_line_errors(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, "IOTDPS_DATA_DIR": str(tmp_path / "d")}
    # A key that may leave its TPM proves nothing about the device: fixedTPM is required.
    movable = rsa_tpm2b_public(SoftTpm(0).ek_private, EK_ATTRS & ~0x2, EK_POLICY)
    cases = {
        "AAEC": "endorsement key: truncated",
        "not base64!": "endorsementKey: not base64",
        base64.b64encode(movable).decode(): "endorsement key: attributes lack fixedTPM",
    }
    for ek, words in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "iotdps", "enrollment", "create", "t", "--endorsement-key", ek],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
