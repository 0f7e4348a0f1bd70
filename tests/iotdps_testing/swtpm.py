"""A real software TPM 2.0 (swtpm) on loopback TCP, provisioned the way Azure's TPM SDKs expect.

`running_swtpm(base_dir)` starts `swtpm socket --tpm2` with a server and a control port on
127.0.0.1 (consecutive ports: the `swtpm:` TCTI always finds control at port + 1), lets swtpm
power itself on and run TPM2_Startup (`--flags not-need-init,startup-clear`), and by default
provisions the two keys the Azure C and Node SDKs use (azure-wire-protocol.md 3.1):

* the EK at persistent handle 0x81010001: RSA-2048 from the TCG default EK template
  (`tpm2_createek -G rsa`: AES-128-CFB, PolicySecret(endorsement) policy, adminWithPolicy);
* the SRK at 0x81000001: RSA-2048 restricted decryption key, AES-128-CFB, userWithAuth|noDA,
  which is the C SDK's and the Node SDK's SRK template.

Everything else talks to the TPM through tpm2-tools with the `swtpm:` TCTI (`Swtpm.tool`), so
tests need no Python TSS. `Swtpm.activate(blob)` plays the device side of the DPS challenge
exactly as the C and Node SDKs do, and `Swtpm.hmac(data)` signs with the imported key.

The binaries come from the Debian packages `swtpm`, `swtpm-tools` and `tpm2-tools`; when one
is missing the helper raises (a TPM test never silently skips).

Every wait is bounded: readiness polling, each tool call (timeout) and the shutdown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EK_HANDLE",
    "ID_KEY_HANDLE",
    "REQUIRED_BINARIES",
    "SRK_ATTRIBUTES",
    "SRK_HANDLE",
    "Swtpm",
    "SwtpmError",
    "require_binaries",
    "running_swtpm",
]

# Persistent handles used by the Azure C SDK (hsm_client_tpm.c) and Node SDK (azure-iot-security-tpm).
EK_HANDLE = 0x81010001
SRK_HANDLE = 0x81000001
ID_KEY_HANDLE = 0x81000100  # where the SDKs persist the key imported from the activation blob

# The SDKs' SRK template: restricted storage key that needs no auth session and is exempt from
# dictionary-attack lockout.
SRK_ATTRIBUTES = "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"

REQUIRED_BINARIES = (
    "swtpm",
    "swtpm_ioctl",
    "tpm2_createek",
    "tpm2_createprimary",
    "tpm2_evictcontrol",
    "tpm2_readpublic",
    "tpm2_flushcontext",
    "tpm2_getcap",
    "tpm2_startauthsession",
    "tpm2_policysecret",
    "tpm2_activatecredential",
    "tpm2_import",
    "tpm2_load",
    "tpm2_hmac",
)
_PACKAGES = "swtpm swtpm-tools tpm2-tools"
# tpm2-tools' credential file: magic 0xBADCC0DE, version 1, then TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
_TOOLS_CREDENTIAL_HEADER = bytes.fromhex("badcc0de00000001")

_START_ATTEMPTS = 5  # a port picked as free can be taken before swtpm binds it
_READY_POLLS = 200
_READY_INTERVAL = 0.025  # 200 x 25 ms: swtpm is up in well under a second on this machine
_TOOL_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0


class SwtpmError(RuntimeError):
    """swtpm or a tpm2-tools command failed; the message carries the command's stderr."""


def require_binaries() -> None:
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if missing:
        raise SwtpmError(f"missing {', '.join(missing)}: apt-get install {_PACKAGES}")


def _free_port_pair(host: str) -> tuple[int, int]:
    """Two consecutive free ports (server, server + 1): libtss2's swtpm TCTI finds control at port + 1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind((host, 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
            return port, port + 1
    raise SwtpmError("no pair of consecutive free loopback ports")


@dataclass
class Swtpm:
    """One running swtpm process, owned by the test that started it."""

    host: str
    port: int
    ctrl_port: int
    state_dir: Path
    process: subprocess.Popen[bytes]
    work_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work_dir = self.state_dir / "work"
        self.work_dir.mkdir(exist_ok=True)

    @property
    def tcti(self) -> str:
        """The TCTI string for tpm2-tools, tpm2-pytss (`TCTILdr('swtpm', ...)`) and libtss2."""
        return f"swtpm:host={self.host},port={self.port}"

    def tool(self, *argv: str, timeout: float = _TOOL_TIMEOUT) -> bytes:
        """Run one tpm2-tools command against this TPM; its stdout, or SwtpmError with stderr."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        try:
            done = subprocess.run(
                list(argv), env=env, cwd=self.work_dir, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise SwtpmError(f"{argv[0]} timed out after {timeout} s") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()
            raise SwtpmError(f"{' '.join(argv)} failed ({done.returncode}): {stderr}")
        return done.stdout

    def read_public(self, handle: int) -> bytes:
        """The marshaled TPM2B_PUBLIC of a loaded or persistent object."""
        out = self.work_dir / f"pub-{handle:08x}.bin"
        self.tool("tpm2_readpublic", "-c", f"0x{handle:08x}", "-o", str(out))
        return out.read_bytes()

    def provision(self) -> None:
        """EK at 0x81010001 and SRK at 0x81000001 (see the module docstring for templates)."""
        self.tool("tpm2_createek", "-c", f"0x{EK_HANDLE:08x}", "-G", "rsa", "-u", "ek.pub")
        self.tool(
            "tpm2_createprimary",
            "-C",
            "o",
            "-g",
            "sha256",
            "-G",
            "rsa2048:null:aes128cfb",
            "-a",
            SRK_ATTRIBUTES,
            "-c",
            "srk.ctx",
        )
        self.tool("tpm2_evictcontrol", "-C", "o", "-c", "srk.ctx", f"0x{SRK_HANDLE:08x}")
        # The transient copy of the primary is no longer needed; swtpm has only three slots.
        self.tool("tpm2_flushcontext", "-t")

    @property
    def ek_public(self) -> bytes:
        return self.read_public(EK_HANDLE)

    @property
    def srk_public(self) -> bytes:
        return self.read_public(SRK_HANDLE)

    def activate(self, blob: bytes) -> None:
        """Import an activation blob the way the Azure C and Node SDKs do (azure-wire-protocol.md 3.3).

        ActivateCredential(activate = SRK, key = EK under a PolicySecret(endorsement) session)
        recovers the inner wrapper key; Import(parent = SRK, that key, AES-128-CFB), Load, and
        EvictControl persist the ID key at 0x81000100, replacing an earlier one. The blob is cut
        here independently of the service's code: six UINT16-sized fields, in SDK order.
        """
        fields = _split_sized(blob, 6)
        files = {
            "cred.bin": _TOOLS_CREDENTIAL_HEADER + fields[0] + fields[1],
            "id.dup": fields[2],
            "id.seed": fields[3],
            "id.pub": fields[4],
        }
        for file_name, data in files.items():
            (self.work_dir / file_name).write_bytes(data)
        srk, ek = f"0x{SRK_HANDLE:08x}", f"0x{EK_HANDLE:08x}"
        self.tool("tpm2_startauthsession", "--policy-session", "-S", "ek-session.ctx")
        try:
            self.tool("tpm2_policysecret", "-S", "ek-session.ctx", "-c", "e")
            self.tool(
                "tpm2_activatecredential",
                "-c",
                srk,
                "-C",
                ek,
                "-i",
                "cred.bin",
                "-o",
                "inner.key",
                "-P",
                "session:ek-session.ctx",
            )
        finally:
            self.tool("tpm2_flushcontext", "ek-session.ctx")
        self.tool(
            "tpm2_import",
            "-C",
            srk,
            "-u",
            "id.pub",
            "-i",
            "id.dup",
            "-s",
            "id.seed",
            "-k",
            "inner.key",
            "-r",
            "id.priv",
        )
        self.tool("tpm2_load", "-C", srk, "-u", "id.pub", "-r", "id.priv", "-c", "id.ctx")
        persistent = self.tool("tpm2_getcap", "handles-persistent").decode().lower()
        if f"0x{ID_KEY_HANDLE:08x}" in persistent:
            self.tool("tpm2_evictcontrol", "-C", "o", "-c", f"0x{ID_KEY_HANDLE:08x}")
        self.tool("tpm2_evictcontrol", "-C", "o", "-c", "id.ctx", f"0x{ID_KEY_HANDLE:08x}")
        self.tool("tpm2_flushcontext", "-t")

    def hmac(self, data: bytes, handle: int = ID_KEY_HANDLE) -> bytes:
        """HMAC-SHA-256 computed inside the TPM with the key at `handle` (how devices sign SAS)."""
        (self.work_dir / "hmac.in").write_bytes(data)
        self.tool("tpm2_hmac", "-c", f"0x{handle:08x}", "-g", "sha256", "-o", "hmac.out", "hmac.in")
        return (self.work_dir / "hmac.out").read_bytes()

    def stop(self) -> None:
        """Graceful shutdown through the control channel (state saved), then kill if it lingers."""
        if self.process.poll() is not None:
            return
        try:
            subprocess.run(
                ["swtpm_ioctl", "--tcp", f"{self.host}:{self.ctrl_port}", "-s"],
                capture_output=True,
                timeout=_STOP_TIMEOUT,
                check=False,
            )
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=_STOP_TIMEOUT)


def _split_sized(data: bytes, count: int) -> list[bytes]:
    """`count` consecutive TPM2B fields, each returned with its UINT16 size; nothing may follow."""
    fields, pos = [], 0
    for _ in range(count):
        if pos + 2 > len(data):
            raise SwtpmError("activation blob is truncated")
        size = int.from_bytes(data[pos : pos + 2], "big")
        if pos + 2 + size > len(data):
            raise SwtpmError("activation blob is truncated")
        fields.append(data[pos : pos + 2 + size])
        pos += 2 + size
    if pos != len(data):
        raise SwtpmError("activation blob has trailing bytes")
    return fields


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(state_dir: Path, host: str) -> Swtpm:
    log_path = state_dir / "swtpm.log"
    last_error = "not started"
    for _ in range(_START_ATTEMPTS):
        port, ctrl_port = _free_port_pair(host)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={state_dir}",
                    "--server",
                    f"type=tcp,port={port},bindaddr={host}",
                    "--ctrl",
                    f"type=tcp,port={ctrl_port},bindaddr={host}",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        for _ in range(_READY_POLLS):
            if process.poll() is not None:
                break
            # Probe the control port: a probe on the server port would occupy swtpm's single
            # command connection.
            if _accepting(host, ctrl_port):
                return Swtpm(host=host, port=port, ctrl_port=ctrl_port, state_dir=state_dir, process=process)
            time.sleep(_READY_INTERVAL)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=_STOP_TIMEOUT)
        last_error = log_path.read_text(errors="replace").strip()[-2000:] or f"exit code {process.returncode}"
    raise SwtpmError(f"swtpm did not start after {_START_ATTEMPTS} attempts: {last_error}")


@contextmanager
def running_swtpm(base_dir: Path, *, provision: bool = True, host: str = "127.0.0.1") -> Iterator[Swtpm]:
    """A fresh swtpm with its state under `base_dir`; stopped on exit even if the body fails."""
    require_binaries()
    base_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(os.path.realpath(base_dir))
    tpm = _start(state_dir, host)
    try:
        if provision:
            tpm.provision()
        yield tpm
    finally:
        tpm.stop()
