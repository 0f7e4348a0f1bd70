"""A real CFSSL server (`cfssl serve` from Debian's golang-cfssl) on a loopback address, signing
with a CA made by our own toolkit.

`running_cfssl(directory)` makes a root and an issuing intermediate (iotdps.pki), writes the
intermediate's key unencrypted (CFSSL cannot read an encrypted PKCS#8 key) with mode 0600 in
`directory`, and a config with:

* profile `device` (the one iotdps uses): digital signature + client auth, `expiry_hours`,
  the auth key `iotdps` (random 32-byte hex, `CfsslServer.auth_key`), and an optional
  `name_whitelist` regex CFSSL matches against the CN (and requested hosts);
* the default profile: one hour, no client auth, and an auth key nobody is given. CFSSL falls
  back to the default profile for an unknown profile name, so this turns a wrong name into a
  refusal (`invalid token`); a default without any auth key would also switch on the
  unauthenticated `/sign` endpoint.

With `tls=True` (the default) CFSSL serves https with a server certificate from a separate
server CA of ours (`CfsslServer.tls_ca`) whose SAN is the loopback address.

It listens on a random 127.x.y.z address and a free port; readiness is a bounded poll of the
port. `stop()` ends the process (SIGTERM, then SIGKILL); `start()` brings it back on the same
address and port. When the `cfssl` binary is missing the helper raises: a test of the CFSSL
issuer that skipped would hide that the integration is untested (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.pki import (
    Issuer,
    KeySpec,
    Validity,
    certs_to_pem,
    create_intermediate_ca,
    create_root_ca,
    create_server_identity,
    encode_private_key,
    generate_private_key,
)
from iotdps.pki.issuing import CfsslIssuer
from iotdps.secret import Secret
from iotdps_testing.net import free_loopback_address, free_port

__all__ = ["CFSSL_PROFILE", "CfsslError", "CfsslServer", "require_cfssl", "running_cfssl"]

CFSSL_PROFILE = "device"
_START_ATTEMPTS = 5  # a port picked as free can be taken before cfssl binds it
_READY_POLLS = 400
_READY_INTERVAL = 0.025  # 400 x 25 ms = 10 s at most; cfssl listens within a second here
_STOP_TIMEOUT = 10.0


class CfsslError(RuntimeError):
    """cfssl is missing or did not start; the message carries its log."""


def require_cfssl() -> str:
    path = shutil.which("cfssl")
    if path is None:
        raise CfsslError("the cfssl binary is missing: apt-get install golang-cfssl")
    return path


def _write_secret(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start (no window where the key is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class CfsslServer:
    """One `cfssl serve` process and the CA material it signs with, owned by the test."""

    directory: Path
    host: str
    port: int
    root: Issuer
    issuing: Issuer
    auth_key: str  # hex, as in the config
    tls_ca: x509.Certificate | None
    args: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca is not None else 'http'}://{self.host}:{self.port}"

    @property
    def ca_chain(self) -> tuple[x509.Certificate, ...]:
        """The issuing CA's certificate, then the root."""
        return (self.issuing.certificate, self.root.certificate)

    @property
    def log_path(self) -> Path:
        return self.directory / "cfssl.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def issuer(
        self,
        *,
        name: str = "cfssl-ca",
        auth_key: str | None = None,
        profile: str = CFSSL_PROFILE,
        ca_chain: tuple[x509.Certificate, ...] | None = None,
        timeout: float = 10.0,
        tls_ca: x509.Certificate | None = None,
    ) -> CfsslIssuer:
        """A CfsslIssuer for this server; each argument can be made wrong on purpose."""
        anchors = tls_ca or self.tls_ca
        return CfsslIssuer(
            name,
            self.url,
            Secret(auth_key or self.auth_key),
            profile,
            ca_chain or self.ca_chain,
            timeout=timeout,
            tls_ca=[anchors] if anchors is not None else None,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart) cfssl on this server's address and port; wait until it listens."""
        if self.running():
            return
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                ["cfssl", "serve", *self.args], cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        for _ in range(_READY_POLLS):
            if process.poll() is not None:
                break
            if _accepting(self.host, self.port):
                self.process = process
                return
            time.sleep(_READY_INTERVAL)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=_STOP_TIMEOUT)
        raise CfsslError(f"cfssl serve did not listen on {self.host}:{self.port}: {self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; afterwards the port refuses connections."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT)


def _make_ca(key_spec: KeySpec) -> tuple[Issuer, Issuer]:
    root_key = generate_private_key(key_spec)
    root = Issuer(create_root_ca("CFSSL Test Root", root_key, Validity.days(3650)), root_key, name="cfssl-root")
    issuing_key = generate_private_key(key_spec)
    issuing_cert = create_intermediate_ca(root, "CFSSL Test Issuing CA", issuing_key.public_key(), Validity.days(1000))
    return root, Issuer(issuing_cert, issuing_key, root.chain, name="cfssl-issuing")


def _config(auth_key: str, expiry_hours: int, name_whitelist: str | None) -> dict[str, object]:
    device: dict[str, object] = {
        "expiry": f"{expiry_hours}h",
        "usages": ["digital signature", "client auth"],
        "auth_key": "iotdps",
    }
    if name_whitelist is not None:
        device["name_whitelist"] = name_whitelist
    return {
        "signing": {
            "default": {"expiry": "1h", "usages": ["digital signature"], "auth_key": "nobody"},
            "profiles": {CFSSL_PROFILE: device},
        },
        "auth_keys": {
            "iotdps": {"type": "standard", "key": auth_key},
            "nobody": {"type": "standard", "key": secrets.token_hex(32)},
        },
    }


@contextmanager
def running_cfssl(
    directory: Path,
    *,
    tls: bool = True,
    expiry_hours: int = 720,
    name_whitelist: str | None = None,
    key_spec: KeySpec = KeySpec.P256,
) -> Iterator[CfsslServer]:
    """A started CFSSL server with its files under `directory`; stopped on exit even if the
    body fails."""
    require_cfssl()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    root, issuing = _make_ca(key_spec)
    (directory / "ca.pem").write_bytes(certs_to_pem([issuing.certificate]))
    (directory / "root.pem").write_bytes(certs_to_pem([root.certificate]))
    _write_secret(directory / "ca-key.pem", encode_private_key(issuing.key, None))
    auth_key = secrets.token_hex(32)
    _write_secret(directory / "config.json", json.dumps(_config(auth_key, expiry_hours, name_whitelist)).encode())

    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        host = free_loopback_address(ports=())
        port = free_port(host)
        args = [
            "-address",
            host,
            "-port",
            str(port),
            "-ca",
            "ca.pem",
            "-ca-key",
            "ca-key.pem",
            "-config",
            "config.json",
        ]
        tls_ca = None
        if tls:
            identity = create_server_identity(dns_names=("localhost",), ip_addresses=(host,), ca_name="CFSSL TLS CA")
            (directory / "tls.pem").write_bytes(certs_to_pem([identity.certificate]))
            _write_secret(
                directory / "tls-key.pem",
                identity.key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
            args += ["-tls-cert", "tls.pem", "-tls-key", "tls-key.pem"]
            tls_ca = identity.ca_certificate
        server = CfsslServer(directory, host, port, root, issuing, auth_key, tls_ca, args)
        try:
            server.start()
        except CfsslError as exc:
            last_error = exc
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    raise CfsslError(f"cfssl did not start after {_START_ATTEMPTS} attempts: {last_error}")
