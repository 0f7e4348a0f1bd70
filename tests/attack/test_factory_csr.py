"""A factory's CA request, and the key it attaches: what the root's machine must not take on trust.

`create-ca-intermediate --csr` signs a CA certificate from a file someone else made. Whatever
that request asks for (a longer path, other key usages, server or client auth, alternative
names, another subject), the certificate carries the root's profile and the name the root's
operator chose; a request not signed by the key it carries, or with a weak key, is refused with
one line before anything is signed. `ca-dir attach-key` refuses a key that is not the
certificate's. Each case runs the real `iotdps` command in its own process.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdps.pki import load_certificates
from iotdps.pki.der import content, tlv
from iotdps_testing.token_cli import one_line_error

SRC = Path(__file__).resolve().parents[2] / "src"
PASSPHRASE = "root-offline-passphrase"


def _run(args: list[str], ca_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    env.update(PYTHONPATH=str(SRC), IOTDPS_CA_DIR=str(ca_dir), IOTDPS_CA_PASSPHRASE=PASSPHRASE)
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("factory-csr")
    ca = cwd / "ca"
    done = _run(["create-ca-root", "--path-length", "1"], ca, cwd)
    assert done.returncode == 0, done.stderr
    return ca, cwd


def _csr_file(cwd: Path, name: str, csr: x509.CertificateSigningRequest | bytes) -> Path:
    path = cwd / f"{name}.csr"
    path.write_bytes(csr if isinstance(csr, bytes) else csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_greedy_csr_gets_the_roots_profile_only(root: tuple[Path, Path]) -> None:
    ca, cwd = root
    key = ec.generate_private_key(ec.SECP256R1())
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Contoso Global Root")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=9), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, True, True, True, True, True, False, False),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("dps.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=None, excluded_subtrees=[x509.DNSName("x")]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    done = _run(
        [
            "create-ca-intermediate",
            "--name",
            "greedy",
            "--parent",
            "root",
            "--csr",
            str(_csr_file(cwd, "greedy", greedy)),
        ],
        ca,
        cwd,
    )
    assert done.returncode == 0, done.stderr
    assert "the CSR asked for CA:TRUE, pathlen 9" in done.stdout and "ignored" in done.stdout
    cert = load_certificates((ca / "greedy.cert.pem").read_bytes())[0]
    assert cert.subject.rfc4514_string() == "CN=greedy"  # the root operator's name, not the CSR's
    assert cert.public_key() == key.public_key()  # the one thing taken from the request
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0  # what root's pathlen 1 leaves
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature and not ku.key_encipherment
    oids = {ext.oid for ext in cert.extensions}
    assert x509.oid.ExtensionOID.EXTENDED_KEY_USAGE not in oids
    assert x509.oid.ExtensionOID.SUBJECT_ALTERNATIVE_NAME not in oids
    assert x509.oid.ExtensionOID.NAME_CONSTRAINTS not in oids
    assert not list(ca.glob("greedy.key.pem"))  # the root's machine never had the factory key


def test_a_csr_for_a_longer_path_than_the_root_allows_is_refused(root: tuple[Path, Path]) -> None:
    ca, cwd = root
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    path = _csr_file(cwd, "deep", csr)
    args = ["create-ca-intermediate", "--name", "deep", "--parent", "root", "--csr", str(path), "--path-length", "3"]
    one_line_error(_run(args, ca, cwd), "path length 3 is more than CA 'root' allows below it (0)")
    assert "deep" not in _run(["ca-dir", "list"], ca, cwd).stdout


def _forged(signing_key: ec.EllipticCurvePrivateKey, claimed: ec.EllipticCurvePublicKey) -> bytes:
    """A CSR that carries `claimed` but is signed by `signing_key`: someone asking a CA
    certificate for a key they do not hold."""
    honest = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .sign(signing_key, hashes.SHA256())
    )
    cri = honest.tbs_certrequest_bytes
    start, _ = content(cri, 0)
    parts = []
    at = start
    while at < len(cri):
        _, nxt = content(cri, at)
        parts.append(cri[at:nxt])
        at = nxt
    parts[2] = claimed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    new_cri = tlv(0x30, b"".join(parts))
    signature = signing_key.sign(new_cri, ec.ECDSA(hashes.SHA256()))
    algorithm = tlv(0x30, bytes.fromhex("06082a8648ce3d040302"))  # ecdsa-with-SHA256
    return tlv(0x30, new_cri + algorithm + tlv(0x03, b"\x00" + signature))


def test_a_csr_not_signed_by_its_key_is_refused(root: tuple[Path, Path]) -> None:
    ca, cwd = root
    victim = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = _csr_file(cwd, "forged", _forged(ec.generate_private_key(ec.SECP256R1()), victim))
    args = ["create-ca-intermediate", "--name", "forged", "--parent", "root", "--csr", str(path)]
    one_line_error(_run(args, ca, cwd), "the CSR's signature does not verify")


@pytest.mark.parametrize(
    ("what", "data", "message"),
    [
        ("garbage", b"not a certificate request", "certificate signing request"),
        ("empty", b"", "certificate signing request"),
        ("a-certificate", None, "certificate signing request"),
    ],
)
def test_unreadable_csrs_are_one_line(root: tuple[Path, Path], what: str, data: bytes | None, message: str) -> None:
    ca, cwd = root
    # None: the root's own certificate sent where a request belongs.
    path = _csr_file(cwd, what, data if data is not None else (ca / "root.cert.pem").read_bytes())
    done = _run(["create-ca-intermediate", "--name", what, "--parent", "root", "--csr", str(path)], ca, cwd)
    one_line_error(done, message)


def test_a_weak_or_odd_key_is_refused(root: tuple[Path, Path]) -> None:
    ca, cwd = root
    for name, key in (
        ("rsa1024", rsa.generate_private_key(65537, 1024)),  # noqa: S505 - the weak key under test
        ("p521", ec.generate_private_key(ec.SECP521R1())),
    ):
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        path = _csr_file(cwd, name, csr)
        done = _run(["create-ca-intermediate", "--name", name, "--parent", "root", "--csr", str(path)], ca, cwd)
        one_line_error(done, "CSR public key")


def test_attach_key_refuses_another_key(root: tuple[Path, Path]) -> None:
    ca, cwd = root
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    path = _csr_file(cwd, "owned", csr)
    assert (
        _run(["create-ca-intermediate", "--name", "owned", "--parent", "root", "--csr", str(path)], ca, cwd).returncode
        == 0
    )
    other = cwd / "other.key.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    one_line_error(
        _run(["ca-dir", "attach-key", "owned", "--key", str(other)], ca, cwd), "is not the key of CA 'owned'"
    )
    assert not (ca / "owned.key.pem").exists()
    # The root's own key cannot be re-pointed either: it has one.
    one_line_error(_run(["ca-dir", "attach-key", "root", "--key", str(other)], ca, cwd), "is not the key of CA 'root'")
    right = cwd / "owned.key.pem"
    right.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert _run(["ca-dir", "attach-key", "owned", "--key", str(right)], ca, cwd).returncode == 0
    one_line_error(_run(["ca-dir", "attach-key", "owned", "--key", str(right)], ca, cwd), "already has its key")
