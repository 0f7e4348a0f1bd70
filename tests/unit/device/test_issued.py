"""device.issued: the key, chain and bundle beside the state file, and when to renew."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotdps.device.issued import IssuedFiles, due_for_renewal, new_key_and_csr
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
