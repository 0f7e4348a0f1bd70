"""A real SoftHSM2 token for the PKCS#11 tests, in a directory of its own.

SoftHSM reads its configuration (SOFTHSM2_CONF: where the token files live) when the module is
initialised, once per process. So a test run makes one configuration and its tokens before
anything loads the module, and every test in the run shares them; tests keep apart by key label.
Debian's `softhsm2` package provides the module and `softhsm2-util`; when either is missing the
helper raises (a PKCS#11 test that skips would hide that custody is untested).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SOFTHSM_MODULE", "SoftHsm", "SoftHsmToken", "softhsm_module", "start_softhsm"]

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def softhsm_module() -> Path:
    """The SoftHSM2 module and its tool, or an error that says how to install them."""
    if not SOFTHSM_MODULE.is_file() or shutil.which("softhsm2-util") is None:
        raise RuntimeError(
            f"SoftHSM2 is not installed ({SOFTHSM_MODULE} or softhsm2-util missing): apt-get install softhsm2"
        )
    return SOFTHSM_MODULE


@dataclass(frozen=True)
class SoftHsmToken:
    label: str
    so_pin: str
    user_pin: str

    def env(self, softhsm: SoftHsm) -> dict[str, str]:
        """The variables iotdps reads to log in to this token."""
        return {
            "SOFTHSM2_CONF": str(softhsm.conf),
            "IOTDPS_PKCS11_MODULE": str(softhsm.module),
            "IOTDPS_PKCS11_PIN": self.user_pin,
            "IOTDPS_PKCS11_TOKEN": self.label,
        }


@dataclass(frozen=True)
class SoftHsm:
    directory: Path
    conf: Path
    module: Path

    def init_token(self, label: str, *, so_pin: str = "so-pin-1234", user_pin: str = "user-pin-1234") -> SoftHsmToken:
        """Initialise a token in a free slot. Only before this process loads the module, or
        the module will not see it (SoftHSM scans its token directory at initialisation)."""
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            check=True,
            capture_output=True,
            timeout=60,
        )
        return SoftHsmToken(label, so_pin, user_pin)

    def tokens(self) -> str:
        """softhsm2-util's view of the slots (for failure messages)."""
        done = subprocess.run(
            ["softhsm2-util", "--show-slots"],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout


def start_softhsm(directory: Path) -> SoftHsm:
    """A SoftHSM configuration whose tokens live in `directory`/tokens, set as this process's
    SOFTHSM2_CONF (the module reads it from the environment, nowhere else)."""
    module = softhsm_module()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
        "slots.mechanisms = ALL\n"
        "library.reset_on_fork = false\n",
        "utf-8",
    )
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return SoftHsm(directory, conf, module)
