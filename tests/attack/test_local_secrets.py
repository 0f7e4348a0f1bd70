"""Secrets at rest on the service's machine: CA key encryption strength, file modes of everything
secret-bearing, and what the first-start banner may write into a log stream.

The key files are parsed with `openssl asn1parse`, not with our own DER code, so the check does
not share a bug with the writer.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from iotdps.pki.keys import load_private_key
from iotdps.secret import Secret
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import start_server

SRC = Path(__file__).resolve().parents[2] / "src"
PASSPHRASE = "a factory passphrase"

# What current guidance accepts (OWASP Password Storage Cheat Sheet): scrypt with N*r*p at least
# 2^14 * 8 * 5 (its 16 MiB setting), or PBKDF2-HMAC-SHA256 with at least 600,000 iterations.
_MIN_SCRYPT_WORK = 2**14 * 8 * 5
_MIN_PBKDF2_ITERATIONS = 600_000


def _cli(args: list[str], ca_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, with a umask of 0 (nothing narrows the modes it asks for)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(PYTHONPATH=str(SRC), IOTDPS_CA_DIR=str(ca_dir), IOTDPS_CA_PASSPHRASE=PASSPHRASE)
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, umask=0
    )


def _asn1(pem: Path) -> list[str]:
    out = subprocess.run(
        ["openssl", "asn1parse", "-in", str(pem)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return out.splitlines()


def kdf_strength(pem: Path) -> tuple[str, int]:
    """('scrypt', N*r*p) or ('PBKDF2', iterations) of an encrypted PKCS#8 file, from openssl's
    own parse of its EncryptedPrivateKeyInfo; the cipher must be AES-256-CBC."""
    lines = _asn1(pem)
    objects = [line.split(":")[-1].strip() for line in lines if "OBJECT" in line]
    integers = [int(line.split(":")[-1].strip(), 16) for line in lines if "INTEGER" in line]
    assert objects[0] == "PBES2", lines
    assert "aes-256-cbc" in objects, lines
    if objects[1] == "scrypt":
        n, r, p = integers[:3]
        return "scrypt", n * r * p
    assert objects[1] == "PBKDF2", lines
    assert "hmacWithSHA256" in objects, lines  # not the SHA-1 default
    return "PBKDF2", integers[0]


def assert_strong(pem: Path) -> None:
    kdf, work = kdf_strength(pem)
    floor = _MIN_SCRYPT_WORK if kdf == "scrypt" else _MIN_PBKDF2_ITERATIONS
    assert work >= floor, f"{pem.name}: {kdf} work factor {work} is below {floor}"


def test_ca_keys_are_written_with_a_strong_kdf_and_old_keys_still_load(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    ca_dir.chmod(0o755)  # made by someone else, open to all
    for args in (
        ["create-ca-root", "--name", "root"],
        ["create-ca-intermediate", "--name", "line", "--parent", "root"],
    ):
        done = _cli(args, ca_dir, tmp_path)
        assert done.returncode == 0, done.stderr
    # The CA directory is owner-only, and so is everything in it but the certificates and the
    # index (public: names, subjects, thumbprints).
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    public = {"index.json", "root.cert.pem", "line.cert.pem"}
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in ca_dir.iterdir() if p.name not in public}
    assert loose and all(mode == "0o600" for mode in loose.values()), loose
    for name in ("root", "line"):
        key_file = ca_dir / f"{name}.key.pem"
        assert key_file.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert_strong(key_file)
        # openssl itself can read what we wrote (its scrypt memory limit is 32 MiB).
        subprocess.run(
            ["openssl", "pkey", "-in", str(key_file), "-passin", f"pass:{PASSPHRASE}", "-noout"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    # A key written by an earlier iotdps (cryptography's PBES2: PBKDF2-SHA256, 2,048 rounds)
    # still works for every command that loads it.
    key_file = ca_dir / "line.key.pem"
    key = load_private_key(key_file.read_bytes(), Secret(PASSPHRASE))
    old = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE.encode()),
    )
    key_file.write_bytes(old)
    assert kdf_strength(key_file) == ("PBKDF2", 2048)
    done = _cli(["create-device-cert", "--ca", "line", "-r", "dev-1", "--out", str(tmp_path / "out")], ca_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "dev-1.cert.pem").exists()


def test_the_strength_check_refuses_a_weak_key(tmp_path: Path) -> None:
    """The check above reads what openssl writes, and a weak work factor fails it."""
    plain = tmp_path / "plain.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(plain)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    weak = tmp_path / "weak.pem"
    subprocess.run(
        [
            *("openssl", "pkcs8", "-topk8", "-in", str(plain), "-out", str(weak), "-passout", "pass:x"),
            *("-scrypt", "-scrypt_N", "1024", "-scrypt_r", "8", "-scrypt_p", "1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert kdf_strength(weak) == ("scrypt", 1024 * 8)
    with pytest.raises(AssertionError, match="below"):
        assert_strong(weak)


# Files of a data dir that carry no secret: the server CA certificate is what devices are given.
PUBLIC_FILES = {"tls/server-ca.pem"}
# Every one of these must exist once `iotdps up` runs (the list the walk below must cover).
SECRET_FILES = {
    "iotdps.db",  # enrollment keys, group master keys, device keys: plain text
    "iotdps.db-wal",
    "iotdps.db-shm",
    "access-policies.json",
    "control.sock",
    "sealing.key",  # seals issuing CAs' secrets (issue 18)
    "tls/server-ca.key",
    "tls/server-ca.passphrase",
    "tls/server.key",
    "tls/server.pem",
}


def _policy_keys(data_dir: Path) -> list[str]:
    policies = json.loads((data_dir / "access-policies.json").read_text())["policies"]
    return [p[k] for p in policies for k in ("primaryKey", "secondaryKey")]


def test_up_keeps_every_secret_owner_only_and_out_of_its_log(tmp_path: Path) -> None:
    """A data dir someone made 0755 beforehand, a process umask of 0, standard output to a file
    (as under a service manager): every secret-bearing file is still 0600, start-up warns about
    the directory, and the log holds no management key and no passphrase."""
    address = free_loopback_address()
    data_dir = tmp_path / f"data-{address}"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    old_umask = os.umask(0)
    try:
        server = start_server(tmp_path, address=address)
    finally:
        os.umask(old_umask)
    try:
        # A write through the CLI while the server holds the database open.
        server.cli("enrollment", "create", "dev-1", "--symmetric-key")
        found = {
            str(path.relative_to(data_dir)): stat.S_IMODE(path.lstat().st_mode)
            for path in data_dir.rglob("*")
            if not path.is_dir()
        }
        assert SECRET_FILES <= found.keys(), sorted(found)
        loose = {name: oct(mode) for name, mode in found.items() if mode & 0o077 and name not in PUBLIC_FILES}
        assert loose == {}, f"readable by others: {loose}"
        assert_strong(data_dir / "tls" / "server-ca.key")

        log = server.log()
        assert "open to other users" in log and str(data_dir) in log
        assert str(data_dir / "access-policies.json") in log  # where the keys are
        secrets_ = [
            *_policy_keys(data_dir),
            (data_dir / "tls" / "server-ca.passphrase").read_text().strip(),
            (data_dir / "sealing.key").read_text().strip(),
        ]
        leaked = [s for s in secrets_ if s in log]
        assert leaked == [], "a key or passphrase went to the log"
    finally:
        assert server.stop() == 0


def test_up_shows_connection_strings_on_a_terminal_only(tmp_path: Path) -> None:
    """On an interactive terminal the first start shows the new keys once (the operator is
    watching); the log stream (stderr, here a file) still holds none."""
    address = free_loopback_address()
    data_dir = tmp_path / "data"
    config = tmp_path / "iotdps.toml"
    config.write_text(
        f'data_dir = "{data_dir}"\n[dps]\nhost_name = "{address}"\nbind = "{address}"\n'
        f'[management]\nbind = "{address}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    env.pop("IOTDPS_DATA_DIR", None)
    primary, secondary = pty.openpty()
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "iotdps", "up", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=stderr,
            env=env,
        )
    os.close(secondary)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while b"First start" not in shown and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    shown += os.read(primary, 65536)
                except OSError:
                    break
        text = shown.decode(errors="replace")
        assert "First start" in text, text + stderr_path.read_text()
        keys = _policy_keys(data_dir)
        owner = json.loads((data_dir / "access-policies.json").read_text())["policies"]
        owner_key = next(p["primaryKey"] for p in owner if p["keyName"] == "provisioningserviceowner")
        assert f"SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={owner_key}" in text
        assert not [k for k in keys if k in stderr_path.read_text()]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        os.close(primary)
