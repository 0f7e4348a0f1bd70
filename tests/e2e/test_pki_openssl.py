"""Certificates made by the iotdps CLI, checked by the openssl binary."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from iotdps.pki import explain_chain, generate_private_key, load_certificates

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True, scope="module")
def _openssl_installed() -> None:
    # Fail, not skip: a skipped check would pass CI while proving nothing (.ci/run installs it).
    if shutil.which("openssl") is None:
        pytest.fail("these tests need the openssl binary", pytrace=False)


SRC = Path(__file__).resolve().parents[2] / "src"


def iotdps(args: list[str], ca: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(PYTHONPATH=str(SRC), IOTDPS_CA_DIR=str(ca), IOTDPS_CA_PASSPHRASE="e2e-pass")
    r = subprocess.run(
        [sys.executable, "-m", "iotdps", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return r


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def split_bundle(path: Path, cwd: Path) -> tuple[Path, Path]:
    certs = load_certificates(path.read_bytes())
    leaf, rest = cwd / f"{path.stem}.leaf.pem", cwd / f"{path.stem}.untrusted.pem"
    leaf.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    rest.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]))
    return leaf, rest


@pytest.fixture(scope="module")
def four_levels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("openssl")
    ca = cwd / "ca"
    iotdps(["create-ca-root", "--path-length", "2"], ca, cwd)
    iotdps(["create-ca-intermediate", "--name", "factory", "--parent", "root"], ca, cwd)
    iotdps(["create-ca-intermediate", "--name", "line", "--parent", "factory"], ca, cwd)
    return ca, cwd


def verify_client(ca: Path, leaf: Path, untrusted: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`openssl verify` of a device certificate as a TLS client, strictly, to the CA dir's root."""
    return openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        str(ca / "root.cert.pem"),
        "-untrusted",
        str(untrusted),
        str(leaf),
        cwd=cwd,
    )


def test_device_bundle_verifies_with_openssl(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    iotdps(["create-device-cert", "-r", "dev-e2e"], ca, cwd)
    leaf, untrusted = split_bundle(cwd / "dev-e2e.cert.pem", cwd)
    r = verify_client(ca, leaf, untrusted, cwd)
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    # The key file is an unencrypted PKCS#8 key that openssl reads, and it matches the certificate.
    k = openssl("pkey", "-in", "dev-e2e.key.pem", "-pubout", cwd=cwd)
    c = openssl("x509", "-in", str(leaf), "-noout", "-pubkey", cwd=cwd)
    assert k.returncode == 0 and k.stdout == c.stdout
    # Without the intermediates openssl refuses, as our explanation says.
    r = openssl("verify", "-CAfile", str(ca / "root.cert.pem"), str(leaf), cwd=cwd)
    assert r.returncode != 0


def test_ca_keys_are_encrypted_for_openssl(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    key = str(ca / "line.key.pem")
    assert openssl("pkey", "-in", key, "-passin", "pass:wrong", "-noout", cwd=cwd).returncode != 0
    assert openssl("pkey", "-in", key, "-passin", "pass:e2e-pass", "-noout", cwd=cwd).returncode == 0


def test_batch_archive_verifies_with_openssl(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    iotdps(["create-device-cert", "--count", "5", "--id-prefix", "b-", "--out", "batch"], ca, cwd)
    leaf, untrusted = split_bundle(cwd / "batch" / "b-000005.cert.pem", cwd)
    r = verify_client(ca, leaf, untrusted, cwd)
    assert r.returncode == 0, r.stdout + r.stderr


def test_openssl_csr_is_signed(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    r = openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "modem.key",
        "-out",
        "modem.csr",
        "-subj",
        "/CN=modem-42",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "extendedKeyUsage=serverAuth",
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr
    iotdps(["create-device-cert", "--csr", "modem.csr", "--ca", "line"], ca, cwd)
    leaf, untrusted = split_bundle(cwd / "modem-42.cert.pem", cwd)
    r = verify_client(ca, leaf, untrusted, cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    text = openssl("x509", "-in", str(leaf), "-noout", "-text", cwd=cwd).stdout
    assert "CA:FALSE" in text and "TLS Web Client Authentication" in text
    assert "Server Authentication" not in text


def test_path_length_violation_rejected_by_openssl_and_us(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    # Forge a CA under the pathlen-0 line CA (our CLI refuses to), then a leaf under it.
    from iotdps.pki import CaDirectory, Issuer, Validity, issue_device_certificate
    from iotdps.secret import Secret

    line = CaDirectory(ca).issuer("line", Secret("e2e-pass"))
    sub_key, leaf_key = generate_private_key(), generate_private_key()
    now = dt.datetime.now(dt.UTC)
    sub = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=too-deep"))
        .issuer_name(line.certificate.subject)
        .public_key(sub_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_key.public_key()), critical=False)
        .add_extension(line.authority_key_identifier, critical=False)
        .sign(line.key, hashes.SHA256())
    )
    leaf = issue_device_certificate(Issuer(sub, sub_key, line.chain), "deep-1", leaf_key.public_key(), Validity.days(1))
    (cwd / "deep.leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (cwd / "deep.chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (sub, *line.bundle))
    )
    r = openssl(
        "verify", "-CAfile", str(ca / "root.cert.pem"), "-untrusted", "deep.chain.pem", "deep.leaf.pem", cwd=cwd
    )
    assert r.returncode != 0 and "path length" in (r.stdout + r.stderr).lower()
    report = explain_chain(leaf, [sub, *line.bundle], [line.chain[-1]])
    assert not report.valid and any("path length violated: 'line'" in p for p in report.problems)


def test_verification_certificate_verifies_against_the_ca(four_levels: tuple[Path, Path]) -> None:
    ca, cwd = four_levels
    iotdps(["proof-ca-root-possession", "--verification-code", "0F1E2D3C4B5A", "--out", "pop.pem"], ca, cwd)
    r = openssl("verify", "-CAfile", str(ca / "root.cert.pem"), "pop.pem", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    subj = openssl("x509", "-in", "pop.pem", "-noout", "-subject", cwd=cwd).stdout
    assert "CN = 0F1E2D3C4B5A" in subj or "CN=0F1E2D3C4B5A" in subj
