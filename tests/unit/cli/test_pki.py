"""The CLI edge: one-line errors with exit code 2, the factory workflow, cert verify."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src"


def run(
    args: list[str],
    ca_dir: Path,
    cwd: Path,
    passphrase: str | None = "pw-1",  # noqa: S107
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    # A data dir with no database: no service is configured, so nothing is registered.
    env.update(PYTHONPATH=str(SRC), IOTDPS_CA_DIR=str(ca_dir), IOTDPS_DATA_DIR=str(cwd / "no-service"))
    if passphrase is not None:
        env["IOTDPS_CA_PASSPHRASE"] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        input=input_text,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("cli")
    ca = cwd / "ca"
    assert run(["create-ca-root", "--path-length", "2"], ca, cwd).returncode == 0
    assert run(["create-ca-intermediate", "--name", "factory", "--parent", "root"], ca, cwd).returncode == 0
    r = run(["create-ca-intermediate", "--name", "line-1", "--parent", "factory"], ca, cwd)
    assert r.returncode == 0, r.stderr
    assert "path length 0" in r.stdout
    return ca, cwd


def _one_line_error(r: subprocess.CompletedProcess[str], text: str, code: int = 2) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], r.stderr


def test_ca_list(workspace: tuple[Path, Path]) -> None:
    ca, cwd = workspace
    r = run(["ca-dir", "list"], ca, cwd)
    assert r.returncode == 0
    assert "line-1" in r.stdout and "parent=factory" in r.stdout


def test_single_device_and_verify(workspace: tuple[Path, Path]) -> None:
    ca, cwd = workspace
    r = run(["create-device-cert", "--registration-id", "dev-one"], ca, cwd)
    assert r.returncode == 0, r.stderr
    assert (cwd / "dev-one.cert.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 3  # leaf + 2 intermediates
    r = run(["cert", "verify", "dev-one.cert.pem", "--key", "dev-one.key.pem"], ca, cwd)
    assert r.returncode == 0 and "VALID" in r.stdout
    r = run(
        ["cert", "verify", "dev-one.cert.pem", "--key", str(ca / "root.key.pem"), "--key-passphrase", "pw-1"], ca, cwd
    )
    assert r.returncode == 1 and "private key does not match" in r.stdout
    r = run(["cert", "inspect", "dev-one.cert.pem"], ca, cwd)
    assert r.returncode == 0 and "clientAuth" in r.stdout and "CN=dev-one" in r.stdout


def test_missing_intermediate_explained(workspace: tuple[Path, Path]) -> None:
    ca, cwd = workspace
    assert run(["create-device-cert", "-r", "dev-two"], ca, cwd).returncode == 0
    leaf_only = (cwd / "dev-two.cert.pem").read_text().split("-----END CERTIFICATE-----")[
        0
    ] + "-----END CERTIFICATE-----\n"
    (cwd / "leaf-only.pem").write_text(leaf_only)
    r = run(["cert", "verify", "leaf-only.pem"], ca, cwd)
    assert r.returncode == 1
    assert "missing intermediate: 'dev-two' was issued by 'CN=line-1'" in r.stdout
    r = run(
        [
            "cert",
            "verify",
            "leaf-only.pem",
            "--chain",
            str(ca / "line-1.cert.pem"),
            "--chain",
            str(ca / "factory.cert.pem"),
        ],
        ca,
        cwd,
    )
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize(
    ("args", "passphrase", "message"),
    [
        (["create-device-cert", "-r", "dev-x"], "wrong", "wrong passphrase for the key of CA 'line-1'"),
        (["create-ca-intermediate", "--name", "x", "--parent", "nope"], "pw-1", "no CA named 'nope'"),
        (["create-device-cert", "-r", "bad/id"], "pw-1", "registration id 'bad/id' contains '/'"),
        (["create-device-cert", "--csr", "garbage.csr"], "pw-1", "not a valid PKCS#10"),
        (["create-ca-intermediate", "--name", "deeper", "--parent", "line-1"], "pw-1", "cannot sign another CA"),
        (["create-ca-root"], "pw-1", "already exists"),
        (["create-device-cert", "-r", "dev-y", "--key-type", "dsa"], "pw-1", "unknown key type"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    workspace: tuple[Path, Path], args: list[str], passphrase: str, message: str
) -> None:
    ca, cwd = workspace
    (cwd / "garbage.csr").write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    # Exit 3 when a named thing does not exist, 2 for every other bad input.
    _one_line_error(run(args, ca, cwd, passphrase=passphrase), message, 3 if "no CA named" in message else 2)


def test_passphrase_prompt_is_confirmed_and_never_echoed(tmp_path: Path) -> None:
    r = run(
        ["create-ca-root", "--name", "prompted"],
        tmp_path / "ca",
        tmp_path,
        passphrase=None,
        input_text="s3cret-pass\ns3cret-pass\n",
    )
    assert r.returncode == 0, r.stderr
    assert "s3cret-pass" not in r.stdout + r.stderr
    r = run(
        ["create-ca-root", "--name", "mismatch"], tmp_path / "ca", tmp_path, passphrase=None, input_text="one\ntwo\n"
    )
    assert r.returncode != 0 and not (tmp_path / "ca" / "mismatch.key.pem").exists()


def test_passphrase_prompt_without_a_terminal_says_how_to_pass_it(tmp_path: Path) -> None:
    # Issue 17: stdin is not a terminal and has nothing (a script, CI): not GetPassWarning + "aborted".
    r = run(["create-ca-root", "--name", "scripted"], tmp_path / "ca", tmp_path, passphrase=None, input_text="")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() == (
        "error: New passphrase for CA 'scripted': no terminal to ask on; "
        "pass it with --passphrase or IOTDPS_CA_PASSPHRASE"
    )
    assert not (tmp_path / "ca" / "scripted.key.pem").exists()


@pytest.mark.parametrize("name", ["b.zip", "b.tar.gz"])
def test_batch_with_progress_to_archive(workspace: tuple[Path, Path], name: str) -> None:
    ca, cwd = workspace
    r = run(["create-device-cert", "--count", "30", "--id-prefix", "line1-", "--out", name], ca, cwd)
    assert r.returncode == 0, r.stderr
    assert "30 devices (line1-000001 .. line1-000030)" in r.stdout
    assert "30/30" in r.stderr  # the progress bar
    assert (cwd / name).stat().st_mode & 0o777 == 0o600
    if name.endswith(".tar.gz"):  # packed by the workers: GNU tar reads every member
        listing = subprocess.run(["tar", "-tzf", name], cwd=cwd, check=True, capture_output=True, text=True).stdout
        assert listing.split() == [
            *(f"line1-{i:06d}.{part}.pem" for i in range(1, 31) for part in ("key", "cert")),
            "manifest.csv",
        ]
    _one_line_error(run(["create-device-cert", "--count", "3", "--out", name], ca, cwd), "already exists")


def test_proof_of_possession(workspace: tuple[Path, Path]) -> None:
    ca, cwd = workspace
    r = run(["proof-ca-root-possession", "--verification-code", "A1B2C3D4E5", "--out", "pop.pem"], ca, cwd)
    assert r.returncode == 0, r.stderr
    r = run(["cert", "inspect", "pop.pem"], ca, cwd)
    assert "subject      CN=A1B2C3D4E5" in r.stdout and "issuer       CN=root" in r.stdout
