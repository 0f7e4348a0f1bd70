"""device.issued: the key, chain and bundle beside the state file, and when to renew."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.device.issued import IssuedFiles, RenewalRule, due_for_renewal, new_key_and_csr
from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key, issue_device_certificate
from iotdps.pki.trust_bundle import TrustBundle


def _issued(days: int, now: dt.datetime) -> tuple[Issuer, x509.Certificate, object]:
    key = generate_private_key()
    root = Issuer(create_root_ca("Device Test Root", key, Validity.days(365, now=now)), key)
    device_key, csr_text = new_key_and_csr("dev-1")
    csr = x509.load_der_x509_csr(base64.b64decode(csr_text))
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == "CN=dev-1"
    leaf = issue_device_certificate(root, "dev-1", csr.public_key(), Validity.days(days, now=now))
    return root, leaf, device_key


def test_renewal_is_due_when_a_third_of_the_validity_is_left() -> None:
    now = dt.datetime.now(dt.UTC)
    _, leaf, _ = _issued(30, now)
    assert not due_for_renewal(leaf, now + dt.timedelta(days=19))
    assert due_for_renewal(leaf, now + dt.timedelta(days=21))
    assert due_for_renewal(leaf, now + dt.timedelta(days=40))  # expired: certainly


def test_files_beside_the_state_file(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    root, leaf, device_key = _issued(30, now)
    files = IssuedFiles(tmp_path / "dev-1.json")
    assert files.credential() is None and files.leaf() is None
    chain = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in (leaf, root.certificate)]
    bundle = TrustBundle.new("fleet-roots", [root.certificate]).to_wire()
    files.save(device_key, chain, bundle)  # type: ignore[arg-type]
    assert files.leaf() == leaf
    assert (files.key_file.stat().st_mode & 0o777) == 0o600
    credential = files.credential()
    assert credential is not None and credential.cert_file == files.chain_file
    pem = files.bundle_pem()
    assert pem is not None and "\r" not in pem
    assert x509.load_pem_x509_certificates(pem.encode()) == [root.certificate]


def _b64(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def test_renewal_rule_fraction_or_fixed_time_before_expiry() -> None:
    now = dt.datetime.now(dt.UTC)
    _, leaf, _ = _issued(10, now)
    half = RenewalRule(fraction=0.5)
    assert not due_for_renewal(leaf, now + dt.timedelta(days=4), half)
    assert due_for_renewal(leaf, now + dt.timedelta(days=6), half)
    last_day = RenewalRule(before=dt.timedelta(days=1))  # wins over the fraction
    assert not due_for_renewal(leaf, now + dt.timedelta(days=8), last_day)
    assert due_for_renewal(leaf, now + dt.timedelta(days=9, hours=1), last_day)
    assert last_day.due_at(leaf) == leaf.not_valid_after_utc - dt.timedelta(days=1)
    for bad in ({"fraction": 0.0}, {"fraction": 1.0}, {"before": dt.timedelta(0)}):
        with pytest.raises(ValueError):
            RenewalRule(**bad)  # type: ignore[arg-type]


def test_key_and_chain_are_replaced_as_a_pair(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    root, leaf, device_key = _issued(30, now)
    files = IssuedFiles(tmp_path / "dev-1.json")
    files.save(device_key, _b64(leaf, root.certificate), None)  # type: ignore[arg-type]
    old_key = files.key_file.read_bytes()
    # A chain for another key is refused before anything is written.
    other_key, other_csr = new_key_and_csr("dev-1")
    with pytest.raises(ValueError, match="new key"):
        files.save(other_key, _b64(leaf, root.certificate), None)
    with pytest.raises(ValueError):
        files.save(other_key, ["not base64!"], None)
    assert files.key_file.read_bytes() == old_key and files.leaf() == leaf
    csr = x509.load_der_x509_csr(base64.b64decode(other_csr))
    renewed = issue_device_certificate(root, "dev-1", csr.public_key(), Validity.days(30, now=now))
    # A crash after the new key was renamed into place but before the chain: finished at the next read.
    files.save(other_key, _b64(renewed, root.certificate), None)
    new_key_pem = files.key_file.read_bytes()
    files.key_file.write_bytes(new_key_pem)
    files.chain_file.rename(tmp_path / "dev-1.json.chain.pem.new")
    files.chain_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))  # the old chain still there
    assert files.leaf() == renewed and not (tmp_path / "dev-1.json.chain.pem.new").exists()
    # A crash before the new chain was written: the stray key is dropped, the pair stays.
    (tmp_path / "dev-1.json.key.pem.new").write_bytes(old_key)
    assert files.leaf() == renewed and files.key_file.read_bytes() == new_key_pem
    assert not (tmp_path / "dev-1.json.key.pem.new").exists()
