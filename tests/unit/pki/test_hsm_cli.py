"""The CA toolkit's commands with CA keys in a real SoftHSM2 token, and factories that never
see the root key (issue 20).

Every certificate a token signs here is judged by the openssl CLI. Each command runs as its own
process (tests/iotdps_testing/token_cli.py says why).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography import x509

from iotdps.pki import load_certificates
from iotdps_testing.token_cli import TokenCli, one_line_error, openssl_verify, start_token_cli

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tc(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    """root (token) -> factory (key file) -> line (token), as the CLI makes them."""
    tc = start_token_cli(tmp_path_factory.mktemp("hsm-cli"))
    out = tc.ok("create-ca-root", "--path-length", "2", "--pkcs11-uri", "pkcs11:object=root")
    assert "generated in the token, never extractable" in out
    tc.ok("create-ca-intermediate", "--name", "factory", "--parent", "root")
    out = tc.ok("create-ca-intermediate", "--name", "line", "--parent", "factory", "--pkcs11-uri", "pkcs11:object=line")
    assert "path length 0" in out
    return tc


def _cert(path: Path) -> x509.Certificate:
    return load_certificates(path.read_bytes())[0]


def test_ca_dir_says_where_each_key_is_and_holds_no_token_key(tc: TokenCli) -> None:
    listing = tc.ok("ca-dir", "list")
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "key=token" in lines["root"] and "key=file" in lines["factory"] and "key=token" in lines["line"]
    assert sorted(p.name for p in tc.ca_dir.glob("*.key.pem")) == ["factory.key.pem"]
    # The token-held CAs' certificates are signed through the token and chain for openssl.
    root = tc.ca_dir / "root.cert.pem"
    assert openssl_verify(root, root, cwd=tc.cwd, purpose=None).returncode == 0
    bundle = tc.cwd / "line-chain.pem"
    bundle.write_bytes((tc.ca_dir / "line.cert.pem").read_bytes() + (tc.ca_dir / "factory.cert.pem").read_bytes())
    done = openssl_verify(root, bundle, cwd=tc.cwd, purpose=None)
    assert done.returncode == 0 and ": OK" in done.stdout, done.stdout + done.stderr


def test_device_certificates_from_a_token_ca_openssl_verifies(tc: TokenCli) -> None:
    out = tc.ok("create-device-cert", "-r", "hsm-dev-1", "--out", "single")
    assert "hsm-dev-1" in out
    bundle = tc.cwd / "single" / "hsm-dev-1.cert.pem"
    done = openssl_verify(tc.ca_dir / "root.cert.pem", bundle, cwd=tc.cwd)
    assert done.returncode == 0 and ": OK" in done.stdout, done.stdout + done.stderr
    leaf = _cert(bundle)
    assert leaf.issuer == _cert(tc.ca_dir / "line.cert.pem").subject
    # The same CA named explicitly by URI (overriding the directory entry) signs too.
    tc.ok("create-device-cert", "-r", "hsm-dev-2", "--out", "single", "--pkcs11-uri", "pkcs11:object=line")
    assert (
        openssl_verify(tc.ca_dir / "root.cert.pem", tc.cwd / "single" / "hsm-dev-2.cert.pem", cwd=tc.cwd).returncode
        == 0
    )


def test_bulk_minting_with_a_token_intermediate_keeps_progress_and_archive(tc: TokenCli) -> None:
    """Two worker processes, each with its own session to the token key."""
    done = tc.run(
        "create-device-cert", "--count", "40", "--id-prefix", "bulk-", "--out", "bulk.tar.gz", "--workers", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "40 devices (bulk-000001 .. bulk-000040) written to archive bulk.tar.gz" in done.stdout
    assert "minting" in done.stderr and "40/40" in done.stderr  # the progress bar
    with tarfile.open(tc.cwd / "bulk.tar.gz") as tar:
        names = tar.getnames()
        manifest = tar.extractfile(next(n for n in names if n.endswith("manifest.csv")))
        assert manifest is not None
        rows = manifest.read().decode().strip().splitlines()
        assert len(rows) == 41  # header + one per device
        members = {Path(n).name: n for n in names}
        for rid in ("bulk-000001", "bulk-000020", "bulk-000040"):
            data = tar.extractfile(members[f"{rid}.cert.pem"])
            assert data is not None
            path = tc.cwd / f"{rid}.cert.pem"
            path.write_bytes(data.read())
            done = openssl_verify(tc.ca_dir / "root.cert.pem", path, cwd=tc.cwd)
            assert done.returncode == 0, done.stdout + done.stderr
    serials = set()
    with tarfile.open(tc.cwd / "bulk.tar.gz") as tar:
        for name in names:
            if name.endswith(".cert.pem"):
                data = tar.extractfile(name)
                assert data is not None
                serials.add(load_certificates(io.BytesIO(data.read()).read())[0].serial_number)
    assert len(serials) == 40


def test_verification_certificate_is_signed_in_the_token(tc: TokenCli) -> None:
    out = tc.ok("proof-ca-root-possession", "--verification-code", "A1B2C3D4E5F60718293A4B5C6D7E8F90", "--out", "v.pem")
    assert "verification certificate for CA 'root'" in out
    cert = _cert(tc.cwd / "v.pem")
    cert.verify_directly_issued_by(_cert(tc.ca_dir / "root.cert.pem"))
    assert cert.subject.rfc4514_string() == "CN=A1B2C3D4E5F60718293A4B5C6D7E8F90"


def test_wrong_pin_is_one_clear_error(tc: TokenCli) -> None:
    done = tc.run("create-device-cert", "-r", "pin-dev", "--out", "pin", IOTDPS_PKCS11_PIN="not-the-pin")
    line = one_line_error(done, "wrong PIN for PKCS#11 token 'factory-ca'")
    assert "not-the-pin" not in done.stderr + done.stdout and tc.token.user_pin not in line
    assert not (tc.cwd / "pin").exists()


def test_missing_token_module_and_pin_are_clear_errors(tc: TokenCli) -> None:
    done = tc.run("create-device-cert", "-r", "t-dev", "--out", "t", "--pkcs11-uri", "pkcs11:token=gone;object=line")
    one_line_error(done, "no PKCS#11 token labelled 'gone'")
    done = tc.run("create-device-cert", "-r", "t-dev", "--out", "t", IOTDPS_PKCS11_TOKEN="unplugged")
    # The CA entry names its token itself; an environment default does not redirect it.
    assert done.returncode == 0, done.stderr
    done = tc.run("create-device-cert", "-r", "t-dev2", "--out", "t", IOTDPS_PKCS11_MODULE="/nonexistent/libp11.so")
    one_line_error(done, "the PKCS#11 module /nonexistent/libp11.so does not exist")
    done = tc.run("create-device-cert", "-r", "t-dev2", "--out", "t", IOTDPS_PKCS11_PIN=None)
    one_line_error(done, "set IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE")
    done = tc.run("create-device-cert", "-r", "t-dev2", "--out", "t", "--pkcs11-uri", "pkcs11:object=line?pin-value=1")
    one_line_error(done, "the PKCS#11 URI carries pin-value")
    # The key of another CA in the same token is not the line's key.
    done = tc.run("create-device-cert", "-r", "t-dev2", "--out", "t", "--pkcs11-uri", "pkcs11:object=root")
    one_line_error(done, "does not match the expected public key")


def test_the_pin_is_never_an_option_nor_shown(tc: TokenCli) -> None:
    for command in ("create-ca-root", "create-ca-intermediate", "create-device-cert", "proof-ca-root-possession"):
        usage = tc.ok(command, "--help")
        assert "--pkcs11-uri" in usage and "IOTDPS_PKCS11_" in usage and "--pin" not in usage
    done = tc.run("create-device-cert", "-r", "quiet-dev", "--out", "quiet")
    assert done.returncode == 0 and tc.token.user_pin not in done.stdout + done.stderr


_NOT_EXPORTABLE = """
import os, pkcs11, sys
lib = pkcs11.lib(os.environ["IOTDPS_PKCS11_MODULE"])
token = lib.get_token(token_label=os.environ["IOTDPS_PKCS11_TOKEN"])
with token.open(rw=True, user_pin=os.environ["IOTDPS_PKCS11_PIN"]) as session:
    key = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label=sys.argv[1])
    print("sensitive", key[pkcs11.Attribute.SENSITIVE], "extractable", key[pkcs11.Attribute.EXTRACTABLE])
    try:
        key[pkcs11.Attribute.VALUE]
        print("VALUE READ")
    except pkcs11.AttributeSensitive:
        print("value refused")
    wrapping = session.generate_key(pkcs11.KeyType.AES, 256, template={pkcs11.Attribute.WRAP: True})
    try:
        wrapping.wrap_key(key, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)
        print("WRAPPED")
    except pkcs11.KeyUnextractable:
        print("wrap refused")
"""


@pytest.mark.parametrize("label", ["root", "line"])
def test_keys_the_cli_made_cannot_be_exported(tc: TokenCli, label: str) -> None:
    done = tc.python(_NOT_EXPORTABLE, label)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sensitive", "True", "extractable", "False", "value", "refused", "wrap", "refused"]


def test_moving_a_key_file_into_the_token(tc: TokenCli) -> None:
    tc.ok("create-ca-intermediate", "--name", "moving", "--parent", "factory", "--path-length", "0")
    assert (tc.ca_dir / "moving.key.pem").exists()
    out = tc.ok("ca-dir", "move-to-token", "moving", "--pkcs11-uri", "pkcs11:object=moving")
    assert "now in the PKCS#11 token only" in out
    assert not (tc.ca_dir / "moving.key.pem").exists()
    assert "key=token" in next(ln for ln in tc.ok("ca-dir", "list").splitlines() if ln.startswith("moving"))
    tc.ok("create-device-cert", "--ca", "moving", "-r", "moved-dev", "--out", "moved")
    done = openssl_verify(tc.ca_dir / "root.cert.pem", tc.cwd / "moved" / "moved-dev.cert.pem", cwd=tc.cwd)
    assert done.returncode == 0, done.stdout
    done = tc.python(_NOT_EXPORTABLE, "moving")
    assert done.stdout.split()[:4] == ["sensitive", "True", "extractable", "False"] and "value refused" in done.stdout
    # Imported once: a second move finds no key file, and the label is taken.
    one_line_error(
        tc.run("ca-dir", "move-to-token", "moving", "--pkcs11-uri", "pkcs11:object=moving2"), "PKCS#11 token"
    )
    tc.ok("create-ca-intermediate", "--name", "moving-b", "--parent", "factory", "--path-length", "0")
    done = tc.run("ca-dir", "move-to-token", "moving-b", "--pkcs11-uri", "pkcs11:object=moving")
    one_line_error(done, "already exists in PKCS#11 token")
    assert (tc.ca_dir / "moving-b.key.pem").exists()  # nothing lost on refusal


# -- factories that never see the root key -------------------------------------------------


def test_factory_csr_in_its_own_token_exported_dir_mints(tmp_path: Path, tc: TokenCli) -> None:
    """The factory has its own token: it makes its key there and a CSR; the root signs it
    offline; the export holds no key at all; the factory attaches its token key and mints."""
    factory = start_token_cli(tmp_path / "factory-site", label="factory-b-token", user_pin="factory-b-pin-31")
    factory.ca_dir = tmp_path / "factory-site" / "ca"
    out = factory.ok("create-ca-csr", "--name", "factory-b", "--pkcs11-uri", "pkcs11:object=factory-b")
    assert "generated in the token" in out
    csr = factory.cwd / "factory-b.csr"
    # Root side (tc's token and directory): sign, then export for the factory.
    tc.ok("create-ca-intermediate", "--name", "factory-b", "--parent", "root", "--csr", str(csr))
    export = tc.cwd / "factory-b-export"
    out = tc.ok("ca-dir", "export", "factory-b", "--out", str(export))
    assert "root -> factory-b" in out and "holds no key" in out
    assert not list(export.glob("*.key.pem"))
    assert sorted(p.name for p in export.iterdir()) == ["factory-b.cert.pem", "index.json", "root.cert.pem"]
    # Factory side: its token, the exported directory.
    factory.ca_dir = export
    one_line_error(factory.run("create-device-cert", "-r", "fb-1", "--out", "d"), "its owner holds it")
    factory.ok("ca-dir", "attach-key", "factory-b", "--pkcs11-uri", "pkcs11:object=factory-b")
    factory.ok("create-device-cert", "-r", "fb-1", "--out", "d")
    done = openssl_verify(export / "root.cert.pem", factory.cwd / "d" / "fb-1.cert.pem", cwd=factory.cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    # The root's own token key is nowhere in the factory's reach.
    listing = factory.ok("ca-dir", "list")
    assert "key=elsewhere" in next(ln for ln in listing.splitlines() if ln.startswith("root"))
    one_line_error(factory.run("create-device-cert", "--ca", "root", "-r", "x", "--out", "d"), "its owner holds it")


def test_export_of_a_file_key_ca_holds_its_key_only(tc: TokenCli) -> None:
    """`factory` has a key file here; its export carries that (still encrypted) file and the
    root's certificate, never a parent key or a token reference."""
    export = tc.cwd / "factory-export"
    tc.ok("ca-dir", "export", "factory", "--out", str(export))
    assert sorted(p.name for p in export.glob("*.key.pem")) == ["factory.key.pem"]
    assert (export / "factory.key.pem").read_bytes() == (tc.ca_dir / "factory.key.pem").read_bytes()
    assert b"pkcs11:" not in (export / "index.json").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in (export / "factory.key.pem").read_bytes()
    assert (export / "factory.key.pem").stat().st_mode & 0o077 == 0
    one_line_error(tc.run("ca-dir", "export", "factory", "--out", str(export)), "already exists")
    one_line_error(tc.run("ca-dir", "export", "nope", "--out", "x"), "no CA named 'nope'")
