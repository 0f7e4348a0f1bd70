"""Run `python -m iotdps ...` as an ordinary user, the way a new user runs it.

As root, the command runs as `nobody` through setpriv (util-linux): the kernel drops every
capability on the switch, CAP_NET_BIND_SERVICE included, so ports below
net.ipv4.ip_unprivileged_port_start are refused as they are for any user. Not as root, the
command runs as the current user. `nobody` must be able to execute the interpreter: a venv's
python is often a symlink into root's home (pyenv), so when the real file is out of reach the
system interpreter of the same version runs with this venv's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["USER", "privileged_port_start", "unprivileged_command", "unprivileged_dir"]

SRC = Path(__file__).resolve().parents[2] / "src"
USER, GROUP = "nobody", "nogroup"


def privileged_port_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip())


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed to run a command as an ordinary user")
    return [setpriv, f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups"]


def _runs_as_user(interpreter: str) -> bool:
    probe = subprocess.run([*_as_user(), interpreter, "-c", "import ssl"], capture_output=True, timeout=30)
    return probe.returncode == 0


def _interpreter() -> str:
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for candidate in candidates:
        if os.path.exists(candidate) and _runs_as_user(candidate):
            return candidate
    pytest.fail(f"no Python {sys.version_info.major}.{sys.version_info.minor} that {USER} can run: {candidates}")


def unprivileged_command(args: Sequence[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run `python -m iotdps <args>` as an ordinary user."""
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    path = os.pathsep.join(dict.fromkeys([str(SRC), *site]))
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **env}
    return [*_as_user(), _interpreter(), "-m", "iotdps", *args], full_env


@contextmanager
def unprivileged_dir() -> Iterator[Path]:
    """A fresh directory the ordinary user owns (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="iotdps-user-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(path, USER, GROUP)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
