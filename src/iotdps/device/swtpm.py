"""Software TPMs for the fleet simulator: `swtpm` processes on loopback, one per device.

Each runs `swtpm socket --tpm2` in TPM 2.0 mode with its command port P and control port P + 1
on 127.0.0.1 (libtss2's swtpm TCTI always finds control at P + 1), powers itself on and runs
TPM2_Startup (`not-need-init,startup-clear`), and gets the EK and SRK at the Azure SDKs'
handles through iotdps.device.tpm. Every process is stopped when the pool closes; every wait
is bounded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from iotdps.device.tpm import Tpm, TpmError

__all__ = ["SwtpmPool"]

_READY_SECONDS = 10.0
_STOP_SECONDS = 5.0


def _port_pair() -> int:
    """A free port P on 127.0.0.1 with P + 1 free too (checked by binding both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise TpmError("no two consecutive free loopback ports for swtpm")


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SwtpmPool:
    """`with SwtpmPool(count, state_dir) as pool:` `pool.tpms` are open, provisioned TPMs."""

    def __init__(self, count: int, state_dir: Path) -> None:
        if shutil.which("swtpm") is None:
            raise TpmError("swtpm is not installed: apt-get install swtpm swtpm-tools (TPM simulation needs it)")
        self.count = count
        self.state_dir = state_dir
        self.tpms: list[Tpm] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._stack = ExitStack()

    def __enter__(self) -> SwtpmPool:
        try:
            for i in range(self.count):
                tpm = self._start(self.state_dir / f"tpm-{i:04d}")
                self._stack.callback(tpm.close)
                tpm.provision_keys()
                self.tpms.append(tpm)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, state: Path) -> Tpm:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _ in range(5):  # a port found free can be taken before swtpm binds it
            port = _port_pair()
            process = subprocess.Popen(
                [
                    "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                    "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self._processes.append(process)
            deadline = time.monotonic() + _READY_SECONDS
            while time.monotonic() < deadline and process.poll() is None:
                # Probe the control port: swtpm serves one command connection at a time.
                if _accepting(port + 1):
                    return Tpm(f"swtpm:host=127.0.0.1,port={port}")
                time.sleep(0.025)
        raise TpmError("swtpm did not start")

    def close(self) -> None:
        self._stack.close()
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_SECONDS)
        self._processes.clear()
