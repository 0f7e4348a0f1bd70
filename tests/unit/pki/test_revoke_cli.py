"""`iotdps revoke`, `crl generate` and `ca-dir set-crl-url` on a CA directory whose line CA key
is in a real SoftHSM2 token (its CRL is signed through the toolkit's Signer) and whose factory
key is a file. The openssl CLI judges every CRL; `cert verify` enforces the directory's CRLs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from iotdps.pki import load_certificates
from iotdps.pki.revocation import load_crl
from iotdps_testing.token_cli import TokenCli, one_line_error, start_token_cli

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tc(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    tc = start_token_cli(tmp_path_factory.mktemp("revoke-cli"))
    tc.ok("create-ca-root", "--path-length", "2")
    tc.ok("ca-dir", "set-crl-url", "http://crl.test:8080/crl/{ca}.crl")
    tc.ok("create-ca-intermediate", "--name", "factory", "--parent", "root")
    tc.ok("create-ca-intermediate", "--name", "line", "--parent", "factory", "--pkcs11-uri", "pkcs11:object=line")
    tc.ok("create-ca-intermediate", "--name", "line-2", "--parent", "factory")
    for rid in ("rv-1", "rv-2"):
        tc.ok("create-device-cert", "-r", rid, "--ca", "line", "--out", rid)
    tc.ok("create-device-cert", "-r", "rv-3", "--ca", "line-2", "--out", "rv-3")
    return tc


def _cdp(cert: x509.Certificate) -> str:
    ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    name = ext[0].full_name
    assert name is not None
    return str(name[0].value)


def _openssl_crl_verify(tc: TokenCli, crl: Path, ca: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "crl", "-in", str(crl), "-CAfile", str(tc.ca_dir / f"{ca}.cert.pem"), "-noout", "-verify"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_minted_certificates_carry_their_issuers_crl_distribution_point(tc: TokenCli) -> None:
    assert _cdp(load_certificates((tc.cwd / "rv-1" / "rv-1.cert.pem").read_bytes())[0]) == (
        "http://crl.test:8080/crl/line.crl"
    )
    line2 = load_certificates((tc.ca_dir / "line-2.cert.pem").read_bytes())[0]
    assert _cdp(line2) == "http://crl.test:8080/crl/factory.crl"


def test_revoking_a_device_signs_the_line_crl_in_the_token(tc: TokenCli) -> None:
    out = tc.ok("revoke", "rv-1/rv-1.cert.pem", "--reason", "keyCompromise")
    assert "revoked CN=rv-1" in out and "under CA line" in out
    crl_file = tc.ca_dir / "crl" / "line.crl.pem"
    done = _openssl_crl_verify(tc, crl_file, "line")
    assert done.returncode == 0 and "verify OK" in done.stderr + done.stdout, done.stderr
    crl = load_crl(crl_file.read_bytes())
    serial = load_certificates((tc.cwd / "rv-1" / "rv-1.cert.pem").read_bytes())[0].serial_number
    assert [r.serial_number for r in crl] == [serial]
    # Again: nothing changes.
    assert "already revoked" in tc.ok("revoke", "rv-1/rv-1.cert.pem")
    # cert verify enforces the directory's CRLs: rv-1 NOT VALID, rv-2 still valid.
    refused = tc.run("cert", "verify", "rv-1/rv-1.cert.pem")
    assert refused.returncode == 1 and "revoked by CA line" in refused.stdout, refused.stdout
    assert tc.run("cert", "verify", "rv-2/rv-2.cert.pem").returncode == 0


def test_revoking_a_line_ca_takes_its_devices_along(tc: TokenCli) -> None:
    out = tc.ok("revoke", "--intermediate", "line-2", "--reason", "cACompromise")
    assert "under CA factory" in out
    done = _openssl_crl_verify(tc, tc.ca_dir / "crl" / "factory.crl.pem", "factory")
    assert done.returncode == 0, done.stderr
    refused = tc.run("cert", "verify", "rv-3/rv-3.cert.pem")
    assert refused.returncode == 1 and "line-2" in refused.stdout and "revoked" in refused.stdout


def test_crl_generate_re_signs_only_what_is_due_or_named(tc: TokenCli) -> None:
    assert "no CRL is due" in tc.ok("crl", "generate")
    out = tc.ok("crl", "generate", "--ca", "line", "--days", "2")
    assert "number 2" in out
    crl = load_crl((tc.ca_dir / "crl" / "line.crl.pem").read_bytes())
    assert crl.next_update_utc is not None and (crl.next_update_utc - crl.last_update_utc).days == 2


def test_bad_input_is_one_error_line(tc: TokenCli) -> None:
    one_line_error(tc.run("revoke"), "give one of")
    one_line_error(tc.run("revoke", "--serial", "zz", "--ca", "line"), "not a hexadecimal number")
    one_line_error(tc.run("revoke", "--intermediate", "root"), "is a root")
    one_line_error(tc.run("ca-dir", "set-crl-url", "ftp://x"), "must start with http://")
