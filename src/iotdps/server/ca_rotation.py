"""Rotating the built-in server CA: a new CA beside the old, activation, retirement.

Seed 002 warns that service certificates rotate, even at the root, and that devices must
hold every issuer they may meet. So a rotation has three steps, each an operator's command,
and the files under `<data_dir>/tls` say which step the server is at:

    step        files                                      the server presents   devices must trust
    (none)      server-ca.*                                 leaf <- active CA     active
    rotate      server-ca.*, next/server-ca.*               leaf <- active (old)  old + next
    activate    server-ca.* (the new one), retiring/...     leaf <- new CA        retiring (old) + new
    retire      server-ca.*                                 leaf <- new CA        new

`rotate` makes the new CA (its key encrypted with the same passphrase as the current one,
server/identity.py) and nothing the server presents changes. Between `rotate` and `activate`
devices learn the new CA from the built-in trust bundle at their next registration
(provisioning/server_ca.py keeps that bundle in the store). `activate` issues a server
certificate from the new CA for the names the current one covers and writes `server.pem` and
`server.key` in one step; a running server follows those files (server/cert_files.py), so the
switch needs no restart. The old CA's key is deleted then: nothing signs with it any more.
Its certificate stays in the bundle until `retire`: devices that hold both keep being told
both until the operator declares the rotation over.

`ca-bundle.pem` always holds every CA devices must trust now: the file to give new devices
(their `server_verification_cert`) during a rotation.

Each step is written so that repeating it after a crash completes it: the order of the writes
below is chosen for that, and every write is atomic (fsutil).

On a shared (PostgreSQL) store the step is the service's, decided in the database; each node's
files follow it through `stage_next`, `activate` and `mirror` (wiring/shared_rotation.py).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import InvalidInput
from iotdps.fsutil import atomic_write, atomic_write_many
from iotdps.pki import (
    Issuer,
    Validity,
    encode_private_key,
    generate_private_key,
    issue_server_certificate,
    load_certificates,
    load_private_key,
)
from iotdps.pki.profiles import create_root_ca
from iotdps.secret import Secret
from iotdps.server.identity import server_ca_passphrase

__all__ = [
    "CA_BUNDLE_FILE",
    "Phase",
    "RotationState",
    "activate",
    "mirror",
    "new_ca",
    "read_state",
    "retire",
    "rotate",
    "stage_next",
]

CA_BUNDLE_FILE = "ca-bundle.pem"
_CA_DAYS = 3650
_SERVER_DAYS = 825


class Phase(StrEnum):
    NONE = "none"  # no rotation under way
    PENDING = "pending"  # a new CA exists; the old one is still presented
    ACTIVATED = "activated"  # the new CA is presented; the old one is still in the bundle


@dataclass(frozen=True)
class RotationState:
    phase: Phase
    active: x509.Certificate  # signs the chain the server presents
    next: x509.Certificate | None = None  # PENDING: the new CA
    retiring: x509.Certificate | None = None  # ACTIVATED: the old CA

    @property
    def new_ca(self) -> x509.Certificate | None:
        """The CA devices must learn before (PENDING) or have learnt by (ACTIVATED) activation."""
        if self.phase is Phase.PENDING:
            return self.next
        if self.phase is Phase.ACTIVATED:
            return self.active
        return None

    @property
    def trusted(self) -> tuple[x509.Certificate, ...]:
        """Every CA devices must trust now, oldest first (the built-in bundle's certificates)."""
        if self.next is not None:
            return (self.active, self.next)
        if self.retiring is not None:
            return (self.retiring, self.active)
        return (self.active,)


@dataclass(frozen=True)
class _Paths:
    tls: Path

    @property
    def ca(self) -> Path:
        return self.tls / "server-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls / "server-ca.key"

    @property
    def chain(self) -> Path:
        return self.tls / "server.pem"

    @property
    def key(self) -> Path:
        return self.tls / "server.key"

    @property
    def next_dir(self) -> Path:
        return self.tls / "next"

    @property
    def retiring_dir(self) -> Path:
        return self.tls / "retiring"

    @property
    def bundle(self) -> Path:
        return self.tls / CA_BUNDLE_FILE


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _one(path: Path) -> x509.Certificate:
    return load_certificates(path.read_bytes())[0]


def read_state(data_dir: Path) -> RotationState:
    """Where the rotation stands; InvalidInput when the data dir has no built-in server CA."""
    p = _Paths(data_dir / "tls")
    if not p.ca.exists():
        raise InvalidInput(
            f"{p.ca} does not exist: start the server once (iotdps up) before rotating its CA "
            "(or the server presents its own certificate, [tls] cert_file, which its own CA rotates)"
        )
    active = _one(p.ca)
    if (p.next_dir / "server-ca.pem").exists():
        pending = _one(p.next_dir / "server-ca.pem")
        # An activation that stopped after the new CA became the active one but before next/
        # was removed: activated (a second `activate` removes the leftover).
        if pending != active:
            return RotationState(Phase.PENDING, active, next=pending)
    if (p.retiring_dir / "server-ca.pem").exists():
        return RotationState(Phase.ACTIVATED, active, retiring=_one(p.retiring_dir / "server-ca.pem"))
    return RotationState(Phase.NONE, active)


def _write_bundle(p: _Paths, state: RotationState) -> None:
    atomic_write(p.bundle, _pem(*state.trusted), mode=0o644)


def rotate(data_dir: Path, environ: Mapping[str, str] | None = None) -> RotationState:
    """Make a new server CA beside the current one (see the module doc)."""
    state = read_state(data_dir)
    if state.phase is not Phase.NONE:
        raise InvalidInput(
            f"a server CA rotation is already {state.phase.value}: "
            + ("activate it (iotdps tls activate)" if state.phase is Phase.PENDING else "retire the old CA first")
            + " before starting another"
        )
    p = _Paths(data_dir / "tls")
    passphrase = server_ca_passphrase(data_dir, environ)
    # The current key must open with that passphrase, or activation would fail much later.
    load_private_key(p.ca_key.read_bytes(), passphrase, what="server CA key")
    ca, key_pem = new_ca(passphrase)
    _stage_next(p, ca, key_pem)
    state = RotationState(Phase.PENDING, state.active, next=ca)
    _write_bundle(p, state)
    return state


def new_ca(passphrase: Secret[str]) -> tuple[x509.Certificate, bytes]:
    """A new server CA: its certificate and its key, encrypted with `passphrase`."""
    key = generate_private_key()
    # A name of its own: two CAs of one name in a device's store make issuer lookup guesswork.
    name = f"iotdps server CA {dt.datetime.now(dt.UTC):%Y-%m-%d} {secrets.token_hex(3)}"
    ca = create_root_ca(name, key, Validity.days(_CA_DAYS), path_length=0)
    return ca, encode_private_key(key, passphrase)


def _stage_next(p: _Paths, ca: x509.Certificate, key_pem: bytes) -> None:
    p.next_dir.mkdir(mode=0o700, exist_ok=True)
    atomic_write(p.next_dir / "server-ca.key", key_pem, mode=0o600)
    # The certificate last: its presence marks a complete new CA (read_state looks for it).
    atomic_write(p.next_dir / "server-ca.pem", _pem(ca), mode=0o644)


def _names(leaf: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def activate(data_dir: Path, environ: Mapping[str, str] | None = None) -> RotationState:
    """Present a chain under the new CA (a running server follows the files, no restart)."""
    state = read_state(data_dir)
    p = _Paths(data_dir / "tls")
    if state.phase is Phase.ACTIVATED:
        shutil.rmtree(p.next_dir, ignore_errors=True)
        _write_bundle(p, state)
        return state
    if state.phase is Phase.NONE or state.next is None:
        raise InvalidInput("no server CA rotation is pending: start one with iotdps tls rotate")
    passphrase = server_ca_passphrase(data_dir, environ)
    new_key_pem = (p.next_dir / "server-ca.key").read_bytes()
    new_key = load_private_key(new_key_pem, passphrase, what="new server CA key")
    current = load_certificates(p.chain.read_bytes())[0]
    dns, ips = _names(current)
    server_key = generate_private_key()
    leaf = issue_server_certificate(
        Issuer(state.next, new_key, name="server-ca"),
        server_key.public_key(),
        Validity.days(_SERVER_DAYS),
        dns_names=dns,
        ip_addresses=ips,
        clamp=True,
    )
    old = state.active
    # 1. Keep the old CA's certificate beside, so the bundle can still carry it. Not its key:
    #    nothing signs with the old CA any more, and a key not kept cannot leak. (read_state
    #    says PENDING while next/ holds another CA, so after a crash anywhere before step 3's
    #    certificate write, `activate` simply runs again.)
    p.retiring_dir.mkdir(mode=0o700, exist_ok=True)
    atomic_write(p.retiring_dir / "server-ca.pem", _pem(old), mode=0o644)
    # 2. The switch: the presented pair, as one unit.
    atomic_write_many({p.key: encode_private_key(server_key, None), p.chain: _pem(leaf, state.next)}, mode=0o600)
    # 3. The new CA becomes the active one (later starts reissue from it): the key replaces
    #    the old CA's key, then the certificate turns read_state to ACTIVATED; then next/ goes.
    atomic_write(p.ca_key, new_key_pem, mode=0o600)
    atomic_write(p.ca, _pem(state.next), mode=0o644)
    shutil.rmtree(p.next_dir)
    done = RotationState(Phase.ACTIVATED, state.next, retiring=old)
    _write_bundle(p, done)
    return done


def retire(data_dir: Path) -> RotationState:
    """Drop the old CA: out of the bundle file, its certificate deleted."""
    state = read_state(data_dir)
    if state.phase is not Phase.ACTIVATED:
        raise InvalidInput(
            "there is no old server CA to retire: "
            + ("activate the new one first (iotdps tls activate)" if state.phase is Phase.PENDING else "no rotation")
        )
    p = _Paths(data_dir / "tls")
    done = RotationState(Phase.NONE, state.active)
    _write_bundle(p, done)
    shutil.rmtree(p.retiring_dir)
    return done


# -- a rotation decided elsewhere (a shared store: wiring/shared_rotation.py) -------------------


def stage_next(data_dir: Path, ca: x509.Certificate, key_pem: bytes) -> RotationState:
    """Put `ca` (its key encrypted with the server CA passphrase) in next/, as `rotate` does:
    `activate` then switches to it."""
    p = _Paths(data_dir / "tls")
    _stage_next(p, ca, key_pem)
    return read_state(data_dir)


def mirror(
    data_dir: Path, next_ca: tuple[x509.Certificate, bytes] | None, retiring: x509.Certificate | None
) -> RotationState:
    """Make next/ and retiring/ hold exactly these (the active CA is left alone), and the bundle
    file follow. Every write is atomic and the result depends on the arguments only, so a
    crash is repaired by calling it again."""
    p = _Paths(data_dir / "tls")
    state = read_state(data_dir)
    if next_ca is None:
        shutil.rmtree(p.next_dir, ignore_errors=True)
    elif state.next != next_ca[0]:
        _stage_next(p, *next_ca)
    if retiring is None:
        shutil.rmtree(p.retiring_dir, ignore_errors=True)
    elif state.retiring != retiring:
        p.retiring_dir.mkdir(mode=0o700, exist_ok=True)
        atomic_write(p.retiring_dir / "server-ca.pem", _pem(retiring), mode=0o644)
    state = read_state(data_dir)
    _write_bundle(p, state)
    return state
