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

With the CA key in a PKCS#11 token (server/ca_key.py: `server-ca.pkcs11` instead of
`server-ca.key`), `rotate` makes the next CA's key in the same token under a label of its own
(`iotdps-server-ca-<date>-<hex>`, the CA name's tag) and records its URI in `next/`; `activate`
signs the new server certificate through the token. A file key is deleted at `activate`; a
token key object cannot be deleted by removing a file, and its URI goes to `retiring/`, where
`retire` destroys the object (after checking it is the retired certificate's key, never the
active one's).

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
    Validity,
    encode_private_key,
    generate_private_key,
    load_certificates,
)
from iotdps.pki.pkcs11_uri import Pkcs11Uri
from iotdps.pki.profiles import create_root_ca
from iotdps.secret import Secret
from iotdps.server.ca_key import (
    CaKeyPlace,
    CaKeyRef,
    CaSigner,
    destroy_token_ca_key,
    new_token_ca_key,
    open_ca_signer,
)
from iotdps.server.identity import CA_DAYS, issue_server_leaf, server_ca_passphrase

__all__ = [
    "CA_BUNDLE_FILE",
    "Phase",
    "RotationState",
    "activate",
    "mirror",
    "new_ca",
    "new_token_ca",
    "read_state",
    "retire",
    "rotate",
    "stage_next",
]

CA_BUNDLE_FILE = "ca-bundle.pem"


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
    # The current key must open (the passphrase, or the token), or activation would fail much later.
    _ca_key(p.tls, state.active, data_dir, environ)
    current_uri = CaKeyPlace(p.tls).token_uri()
    key: CaKeyRef
    if current_uri is not None:  # the next CA's key goes where the current one is: the token
        ca, key = new_token_ca(current_uri.token, environ)
    else:
        ca, key = new_ca(server_ca_passphrase(data_dir, environ))
    _stage_next(p, ca, key)
    state = RotationState(Phase.PENDING, state.active, next=ca)
    _write_bundle(p, state)
    return state


def _new_names() -> tuple[str, str]:
    """A new CA's name and its key's label in a token. A name of its own: two CAs of one name
    in a device's store make issuer lookup guesswork."""
    day, tag = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}", secrets.token_hex(3)
    return f"iotdps server CA {day} {tag}", f"iotdps-server-ca-{day}-{tag}"


def new_ca(passphrase: Secret[str]) -> tuple[x509.Certificate, bytes]:
    """A new server CA: its certificate and its key, encrypted with `passphrase`."""
    key = generate_private_key()
    ca = create_root_ca(_new_names()[0], key, Validity.days(CA_DAYS), path_length=0)
    return ca, encode_private_key(key, passphrase)


def new_token_ca(token: str | None, environ: Mapping[str, str] | None = None) -> tuple[x509.Certificate, Pkcs11Uri]:
    """A new server CA whose key is made inside the PKCS#11 token (never extractable): its
    certificate and the key's URI."""
    name, label = _new_names()
    with new_token_ca_key(Pkcs11Uri(token=token, object=label), environ) as signer:
        return create_root_ca(name, signer, Validity.days(CA_DAYS), path_length=0), signer.uri


def _stage_next(p: _Paths, ca: x509.Certificate, key: CaKeyRef) -> None:
    p.next_dir.mkdir(mode=0o700, exist_ok=True)
    CaKeyPlace(p.next_dir).hold(key)
    # The certificate last: its presence marks a complete new CA (read_state looks for it).
    atomic_write(p.next_dir / "server-ca.pem", _pem(ca), mode=0o644)


def _ca_key(
    directory: Path, certificate: x509.Certificate, data_dir: Path, environ: Mapping[str, str] | None
) -> CaSigner:
    """The key of the CA whose files are in `directory`: in the token its URI file names, or
    its key file, under the server CA passphrase (the seam between rotation and key custody)."""

    def passphrase() -> Secret[str]:
        return server_ca_passphrase(data_dir, environ)

    return open_ca_signer(CaKeyPlace(directory), certificate, passphrase, environ)


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
    new_key = _ca_key(p.next_dir, state.next, data_dir, environ)
    current = load_certificates(p.chain.read_bytes())[0]
    dns, ips = _names(current)
    leaf, server_key = issue_server_leaf(state.next, new_key, dns, ips)
    old = state.active
    # 1. Keep the old CA's certificate beside, so the bundle can still carry it. Not its key:
    #    nothing signs with the old CA any more, and a key not kept cannot leak. (read_state
    #    says PENDING while next/ holds another CA, so after a crash anywhere before step 3's
    #    certificate write, `activate` simply runs again.)
    #    A key in the token is the exception: its URI goes beside, for `retire` to destroy it.
    p.retiring_dir.mkdir(mode=0o700, exist_ok=True)
    active_place, next_place = CaKeyPlace(p.tls), CaKeyPlace(p.next_dir)
    old_uri = active_place.token_uri()
    if old_uri is not None and old_uri != next_place.token_uri():  # not after step 3 began
        CaKeyPlace(p.retiring_dir).record_uri(old_uri)
    atomic_write(p.retiring_dir / "server-ca.pem", _pem(old), mode=0o644)
    # 2. The switch: the presented pair, as one unit.
    atomic_write_many({p.key: encode_private_key(server_key, None), p.chain: _pem(leaf, state.next)}, mode=0o600)
    # 3. The new CA becomes the active one (later starts reissue from it): the key replaces
    #    the old CA's key, then the certificate turns read_state to ACTIVATED; then next/ goes.
    active_place.hold(next_place.held())
    atomic_write(p.ca, _pem(state.next), mode=0o644)
    shutil.rmtree(p.next_dir)
    done = RotationState(Phase.ACTIVATED, state.next, retiring=old)
    _write_bundle(p, done)
    return done


def retire(data_dir: Path, environ: Mapping[str, str] | None = None) -> RotationState:
    """Drop the old CA: out of the bundle file, its certificate deleted, its key object in the
    token (if it was there) destroyed."""
    state = read_state(data_dir)
    if state.phase is not Phase.ACTIVATED:
        raise InvalidInput(
            "there is no old server CA to retire: "
            + ("activate the new one first (iotdps tls activate)" if state.phase is Phase.PENDING else "no rotation")
        )
    p = _Paths(data_dir / "tls")
    old_uri = CaKeyPlace(p.retiring_dir).token_uri()
    if old_uri is not None and state.retiring is not None and old_uri != CaKeyPlace(p.tls).token_uri():
        # Checked against the retired certificate: a mix-up never destroys another key.
        destroy_token_ca_key(old_uri, state.retiring, environ)
    done = RotationState(Phase.NONE, state.active)
    _write_bundle(p, done)
    shutil.rmtree(p.retiring_dir)
    return done


# -- a rotation decided elsewhere (a shared store: wiring/shared_rotation.py) -------------------


def stage_next(data_dir: Path, ca: x509.Certificate, key: CaKeyRef) -> RotationState:
    """Put `ca` (its key encrypted with the server CA passphrase, or the URI of its key in a
    token) in next/, as `rotate` does: `activate` then switches to it."""
    p = _Paths(data_dir / "tls")
    _stage_next(p, ca, key)
    return read_state(data_dir)


def mirror(
    data_dir: Path, next_ca: tuple[x509.Certificate, CaKeyRef] | None, retiring: x509.Certificate | None
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
