"""The built-in server CA's rotation on disk (server/ca_rotation.py): rotate, activate, retire."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.errors import BadPassphrase, ConfigError, InvalidInput
from iotdps.pki import load_certificates
from iotdps.server.ca_rotation import Phase, activate, read_state, retire, rotate
from iotdps.server.cert_files import CertificateFiles, load_pair
from iotdps.server.identity import ensure_server_identity

ENV = {"IOTDPS_SERVER_CA_PASSPHRASE": "rotation test passphrase"}
NAMES = ("localhost", "127.0.0.1", "dps.example.test")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_server_identity(tmp_path, NAMES, ENV)
    return tmp_path


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))}


def _bundle(data_dir: Path) -> list[x509.Certificate]:
    return load_certificates((data_dir / "tls" / "ca-bundle.pem").read_bytes())


def test_a_rotation_walked_through(data_dir: Path) -> None:
    tls = data_dir / "tls"
    old_ca = load_certificates((tls / "server-ca.pem").read_bytes())[0]
    old_chain = (tls / "server.pem").read_bytes()
    assert read_state(data_dir).phase is Phase.NONE

    pending = rotate(data_dir, ENV)
    assert pending.phase is Phase.PENDING and pending.next is not None
    assert pending.new_ca == pending.next and pending.trusted == (old_ca, pending.next)
    assert pending.next.subject != old_ca.subject  # a name of its own
    assert (tls / "server.pem").read_bytes() == old_chain  # nothing presented changed
    key_pem = (tls / "next" / "server-ca.key").read_bytes()
    assert b"ENCRYPTED" in key_pem  # encrypted at rest, like the current CA key
    assert stat.S_IMODE((tls / "next" / "server-ca.key").stat().st_mode) == 0o600
    serialization.load_pem_private_key(key_pem, ENV["IOTDPS_SERVER_CA_PASSPHRASE"].encode())
    assert _bundle(data_dir) == [old_ca, pending.next]
    assert read_state(data_dir) == pending

    with pytest.raises(InvalidInput, match="already pending"):
        rotate(data_dir, ENV)

    active = activate(data_dir, ENV)
    assert active.phase is Phase.ACTIVATED and active.active == pending.next and active.retiring == old_ca
    chain, _ = load_pair(CertificateFiles(tls / "server.pem", tls / "server.key"))
    assert chain[0].issuer == pending.next.subject and chain[1] == pending.next
    assert _sans(chain[0]) == set(NAMES)
    assert load_certificates((tls / "server-ca.pem").read_bytes()) == [pending.next]
    assert not (tls / "next").exists()
    assert not (tls / "retiring" / "server-ca.key").exists()  # the old key is gone
    assert _bundle(data_dir) == [old_ca, pending.next]
    assert activate(data_dir, ENV) == active  # repeating it changes nothing

    # A later start keeps the new chain (it is fresh and covers the names).
    again = ensure_server_identity(data_dir, NAMES, ENV)
    assert not again.reissued and again.chain_pem.read_bytes() == (tls / "server.pem").read_bytes()

    done = retire(data_dir)
    assert done.phase is Phase.NONE and done.trusted == (pending.next,)
    assert _bundle(data_dir) == [pending.next]
    assert not (tls / "retiring").exists()
    with pytest.raises(InvalidInput, match="no old server CA"):
        retire(data_dir)


def test_activate_after_a_crash_midway_completes(data_dir: Path) -> None:
    tls = data_dir / "tls"
    pending = rotate(data_dir, ENV)
    # As if activate stopped right after the new CA became the active one.
    (tls / "server-ca.pem").write_bytes((tls / "next" / "server-ca.pem").read_bytes())
    (tls / "retiring").mkdir()
    old = load_certificates((tls / "ca-bundle.pem").read_bytes())[0]
    (tls / "retiring" / "server-ca.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    assert read_state(data_dir).phase is Phase.ACTIVATED
    state = activate(data_dir, ENV)
    assert state.active == pending.next and state.retiring == old and not (tls / "next").exists()


def test_commands_out_of_order_and_missing_pieces(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="no server CA rotation is pending"):
        activate(data_dir, ENV)
    with pytest.raises(InvalidInput, match="no rotation"):
        retire(data_dir)
    with pytest.raises(InvalidInput, match="start the server once"):
        rotate(tmp_path / "empty", ENV)
    with pytest.raises(ConfigError, match="passphrase is missing"):
        rotate(data_dir, {})
    assert read_state(data_dir).phase is Phase.NONE  # nothing was written
    with pytest.raises(BadPassphrase):  # a wrong passphrase: refused before anything is written
        rotate(data_dir, {"IOTDPS_SERVER_CA_PASSPHRASE": "wrong"})
    assert not (data_dir / "tls" / "next").exists()


def test_mirror_makes_next_and_retiring_what_it_is_given(data_dir: Path) -> None:
    """The shared-store follower's writer (wiring/shared_rotation.py): next/ and retiring/ become
    exactly the arguments, the active CA stays, and a second call changes nothing."""
    from iotdps.secret import Secret
    from iotdps.server.ca_rotation import mirror, new_ca

    tls = data_dir / "tls"
    active = load_certificates((tls / "server-ca.pem").read_bytes())[0]
    ca, key_pem = new_ca(Secret(ENV["IOTDPS_SERVER_CA_PASSPHRASE"]))
    for _ in range(2):
        state = mirror(data_dir, (ca, key_pem), None)
        assert state.phase is Phase.PENDING and state.next == ca and _bundle(data_dir) == [active, ca]
        assert (tls / "next" / "server-ca.key").read_bytes() == key_pem
    state = activate(data_dir, ENV)  # the node's own switch, from what mirror staged
    assert state.active == ca and state.retiring == active
    for _ in range(2):
        state = mirror(data_dir, None, active)
        assert state.phase is Phase.ACTIVATED and _bundle(data_dir) == [active, ca]
    state = mirror(data_dir, None, None)
    assert state.phase is Phase.NONE and _bundle(data_dir) == [ca] and not (tls / "retiring").exists()
