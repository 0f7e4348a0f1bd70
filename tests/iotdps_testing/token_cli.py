"""The `iotdps` CLI against a real SoftHSM2 token, in child processes.

SoftHSM reads SOFTHSM2_CONF once per process, and tests/unit/pki/test_pkcs11.py owns this
process's token directory; so every command that touches a token here runs as its own
`python -m iotdps`, with the token's configuration in its environment and nowhere else. The
PIN goes in IOTDPS_PKCS11_PIN (the only places iotdps reads it are the environment and a PIN
file), never in argv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from iotdps_testing.softhsm import SoftHsm, SoftHsmToken, softhsm_module

__all__ = ["TokenCli", "one_line_error", "openssl_verify", "start_token_cli"]

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]


@dataclass
class TokenCli:
    hsm: SoftHsm
    token: SoftHsmToken
    ca_dir: Path
    cwd: Path
    passphrase: str = "factory-passphrase-1"
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTDPS_", "SOFTHSM2_"))}
        env.update(self.token.env(self.hsm))
        env.update(
            PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]),
            IOTDPS_CA_DIR=str(self.ca_dir),
            IOTDPS_CA_PASSPHRASE=self.passphrase,
            # No database there: no service is configured, so the toolkit registers nothing.
            IOTDPS_DATA_DIR=str(self.ca_dir.parent / "no-service"),
        )
        env.update(self.extra_env)
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "iotdps", *args],
            env=self.env(**env),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def ok(self, *args: str, **env: str | None) -> str:
        done = self.run(*args, **env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def python(self, code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A child Python with this token's environment (to ask the token something directly)."""
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            env=self.env(),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def start_token_cli(directory: Path, label: str = "factory-ca", user_pin: str = "token-pin-2718") -> TokenCli:
    """A SoftHSM configuration and one initialised token under `directory`, without touching
    this process's environment (see the module docstring)."""
    module = softhsm_module()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        "utf-8",
    )
    hsm = SoftHsm(directory, conf, module)
    token = hsm.init_token(label, user_pin=user_pin)
    cwd = directory / "work"
    cwd.mkdir()
    return TokenCli(hsm, token, directory / "ca", cwd)


def one_line_error(done: subprocess.CompletedProcess[str], text: str) -> str:
    """The command failed with exit 2 (3 when a named thing does not exist) and exactly one
    `error: ...` line containing `text`."""
    assert done.returncode == (3 if "no CA named" in text else 2), (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], done.stderr
    return lines[0]


def openssl_verify(
    root: Path, bundle: Path, *, cwd: Path, purpose: str | None = "sslclient"
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` of a bundle (leaf first, then its intermediates) against `root`; a
    device's for TLS client use unless `purpose` is None (a CA certificate's)."""
    extra = ["-purpose", purpose] if purpose else []
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(bundle), *extra, str(bundle)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
