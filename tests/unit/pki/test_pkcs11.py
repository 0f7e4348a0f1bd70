"""CA keys in a real PKCS#11 token (SoftHSM2), and X.509 objects signed through it.

Everything a token signs here is checked by the openssl CLI, not only by the code that made it.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdps.errors import AlreadyExists, InvalidInput, PkiError
from iotdps.pki.external_signing import (
    ECDSA_SHA256,
    ECDSA_SHA384,
    RSA_PKCS1_SHA256,
    Signer,
    SignerPublicKey,
    SoftwareSigner,
    sign_certificate,
    sign_crl,
    sign_csr,
)
from iotdps.pki.keys import KeySpec, generate_private_key
from iotdps.pki.pkcs11 import Pkcs11Signer, Pkcs11Token
from iotdps.pki.pkcs11_uri import (
    KeyNotFound,
    ModuleNotFound,
    Pkcs11Config,
    Pkcs11Error,
    Pkcs11Uri,
    TokenNotFound,
    WrongPin,
    parse_pkcs11_uri,
)
from iotdps.pki.template import _sig_alg
from iotdps.secret import Secret
from iotdps_testing.softhsm import SOFTHSM_MODULE, SoftHsm, SoftHsmToken, start_softhsm

# -- the token ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SoftHsm, SoftHsmToken, SoftHsmToken]]:
    """Two tokens for the whole run: the CA token most tests use, and one no test logs in to
    with the right PIN (so a wrong PIN there is checked by the token itself)."""
    import os

    before = os.environ.get("SOFTHSM2_CONF")
    hsm = start_softhsm(tmp_path_factory.mktemp("softhsm"))
    main = hsm.init_token("iotdps-ca", user_pin="ca-user-pin-4711")
    spare = hsm.init_token("spare", user_pin="spare-user-pin-0815")
    yield hsm, main, spare
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture
def config(softhsm: tuple[SoftHsm, SoftHsmToken, SoftHsmToken]) -> Pkcs11Config:
    _, token, _ = softhsm
    return Pkcs11Config(SOFTHSM_MODULE, Secret(token.user_pin), token.label)


@pytest.fixture
def token(config: Pkcs11Config) -> Iterator[Pkcs11Token]:
    with Pkcs11Token.open(config) as opened:
        yield opened


def _label() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


# -- certificates built like the toolkit's profiles ------------------------------------------

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_builder(
    subject: str, public_key: SignerPublicKey, issuer: x509.Certificate | None, issuer_key: SignerPublicKey
) -> x509.CertificateBuilder:
    ku = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ku, critical=True)
    )


def _device_builder(cn: str, public_key: SignerPublicKey, issuer: x509.Certificate) -> x509.CertificateBuilder:
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ku, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )


def _self_signed_ca(signer: Signer, cn: str) -> x509.Certificate:
    pub = signer.public_key()
    return sign_certificate(_ca_builder(cn, pub, None, pub), signer)


def _pem(path: Path, *objs: x509.Certificate | x509.CertificateRevocationList | x509.CertificateSigningRequest) -> Path:
    path.write_bytes(b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objs))
    return path


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)


# -- URIs (no token needed) ------------------------------------------------------------------


def test_uri_parses_the_attributes_we_use() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=Factory%20CA;manufacturer=SoftHSM%20project;object=line-1;id=%01%a2;type=private"
    )
    assert uri.token == "Factory CA"
    assert uri.manufacturer == "SoftHSM project"
    assert uri.object == "line-1"
    assert uri.id == b"\x01\xa2"
    assert uri.type == "private"
    assert uri.module_path is None and uri.pin_value is None
    assert parse_pkcs11_uri(str(uri)) == uri  # str() writes a URI that reads back the same
    assert parse_pkcs11_uri("PKCS11:object=a").object == "a"  # the scheme is case-insensitive
    assert parse_pkcs11_uri("pkcs11:") == Pkcs11Uri()
    assert parse_pkcs11_uri("pkcs11:object=a=b;token=x&y").object == "a=b"  # '=' and '&' may stand in values


def test_uri_query_attributes_are_parsed_then_refused_for_keys() -> None:
    uri = parse_pkcs11_uri("pkcs11:object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=hunter2")
    assert uri.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert uri.pin_value is not None and uri.pin_value.reveal() == "hunter2"
    # The PIN never shows, whichever way the URI is printed.
    assert "hunter2" not in str(uri) and "hunter2" not in repr(uri)
    with pytest.raises(InvalidInput, match="pin-value") as err:
        uri.key_only()
    assert "hunter2" not in str(err.value)
    with pytest.raises(InvalidInput, match="module-path; iotdps takes it only from IOTDPS_PKCS11_MODULE"):
        parse_pkcs11_uri("pkcs11:object=k?module-path=/tmp/evil.so").key_only()
    with pytest.raises(InvalidInput, match="pin-source"):
        parse_pkcs11_uri("pkcs11:object=k?pin-source=file:/etc/pin").key_only()
    assert parse_pkcs11_uri("pkcs11:object=k;id=%07").key_only().id == b"\x07"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file:object=k", "starts with 'pkcs11:'"),
        ("pkcs11:slot-id=1", "path attribute 'slot-id' is not supported"),
        ("pkcs11:object=k?x-vendor=1", "query attribute 'x-vendor' is not supported"),
        ("pkcs11:object=a;object=b", "object appears twice"),
        ("pkcs11:object", "has no '=value'"),
        ("pkcs11:object=a%zz", "bad percent-escape"),
        ("pkcs11:object=a b", "must be percent-encoded"),
        ("pkcs11:object=a/b", "must be percent-encoded"),
        ("pkcs11:type=secret", "type 'secret' is not one of"),
        ("pkcs11:id=", "id is empty"),
        ("pkcs11:object=%ff", "not UTF-8"),
    ],
)
def test_uri_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_pkcs11_uri(text)


def test_uri_errors_never_echo_a_pin() -> None:
    for text in ("pkcs11:object=k?pin-value=s3cr%zz", "pkcs11:object=k?pin-value=s3cr t"):
        with pytest.raises(InvalidInput, match="pin-value") as err:
            parse_pkcs11_uri(text)
        assert "s3cr" not in str(err.value)


# -- configuration ---------------------------------------------------------------------------


def test_config_from_environment(tmp_path: Path) -> None:
    module = str(SOFTHSM_MODULE)
    cfg = Pkcs11Config.from_env(
        {"IOTDPS_PKCS11_MODULE": module, "IOTDPS_PKCS11_PIN": "1234", "IOTDPS_PKCS11_TOKEN": "ca"}
    )
    assert (cfg.module_path, cfg.pin.reveal(), cfg.token_label) == (SOFTHSM_MODULE, "1234", "ca")
    assert "1234" not in repr(cfg)
    pin_file = tmp_path / "pin"
    pin_file.write_text("from-a-file\nsecond line\n")
    cfg = Pkcs11Config.from_env({"IOTDPS_PKCS11_MODULE": module, "IOTDPS_PKCS11_PIN_FILE": str(pin_file)})
    assert cfg.pin.reveal() == "from-a-file" and cfg.token_label is None

    cases = [
        ({}, "set IOTDPS_PKCS11_MODULE"),
        ({"IOTDPS_PKCS11_MODULE": "libsofthsm2.so", "IOTDPS_PKCS11_PIN": "1"}, "must be an absolute path"),
        ({"IOTDPS_PKCS11_MODULE": module}, "set IOTDPS_PKCS11_PIN or IOTDPS_PKCS11_PIN_FILE"),
        ({"IOTDPS_PKCS11_MODULE": module, "IOTDPS_PKCS11_PIN": "1", "IOTDPS_PKCS11_PIN_FILE": "/x"}, "not both"),
        ({"IOTDPS_PKCS11_MODULE": module, "IOTDPS_PKCS11_PIN_FILE": str(tmp_path / "none")}, "cannot read the PIN"),
    ]
    for env, message in cases:
        with pytest.raises(Pkcs11Error, match=message):
            Pkcs11Config.from_env(env)


# -- signing through the token ---------------------------------------------------------------

SPECS = [KeySpec.P256, KeySpec.P384, KeySpec.RSA2048, KeySpec.RSA3072]


@pytest.mark.parametrize("spec", SPECS, ids=[s.value for s in SPECS])
def test_token_ca_signs_device_certificates_openssl_verifies(token: Pkcs11Token, tmp_path: Path, spec: KeySpec) -> None:
    root = token.generate_key(spec, label=_label())
    assert isinstance(root, Signer)
    assert root.algorithm is {"p256": ECDSA_SHA256, "p384": ECDSA_SHA384}.get(spec.value, RSA_PKCS1_SHA256)
    root_cert = _self_signed_ca(root, f"HSM Root {spec.value}")
    # An intermediate whose key is in the token too, under the token root.
    line = token.generate_key(KeySpec.P256, label=_label())
    line_builder = _ca_builder("Line 1", line.public_key(), root_cert, root.public_key())
    line_cert = sign_certificate(line_builder, root, issuer=root_cert)
    device_key = ec.generate_private_key(ec.SECP256R1())
    device_builder = _device_builder("device-001", device_key.public_key(), line_cert)
    device = sign_certificate(device_builder, line, issuer=line_cert)
    # The wrong key for a CA (a URI naming another object) is refused before the token signs.
    with pytest.raises(PkiError, match="the signing key is not the key of the CA certificate 'CN=Line 1'"):
        sign_certificate(device_builder, root, issuer=line_cert)
    with pytest.raises(PkiError, match="issuer name is not the subject"):
        sign_certificate(device_builder, line, issuer=root_cert)

    assert root_cert.signature_algorithm_oid == root.algorithm.oid
    device.verify_directly_issued_by(line_cert)
    line_cert.verify_directly_issued_by(root_cert)
    done = _openssl(
        "verify", "-x509_strict", "-purpose", "sslclient",
        "-CAfile", _pem(tmp_path / "root.pem", root_cert),
        "-untrusted", _pem(tmp_path / "line.pem", line_cert),
        _pem(tmp_path / "device.pem", device),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("device.pem: OK")


def test_token_signs_a_crl_openssl_accepts_and_enforces(token: Pkcs11Token, tmp_path: Path) -> None:
    ca = token.generate_key(KeySpec.P256, label=_label())
    ca_cert = _self_signed_ca(ca, "CRL CA")
    device_key = ec.generate_private_key(ec.SECP256R1())
    revoked = sign_certificate(_device_builder("revoked-1", device_key.public_key(), ca_cert), ca)
    kept = sign_certificate(_device_builder("kept-1", device_key.public_key(), ca_cert), ca)
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(revoked.serial_number)
        .revocation_date(NOW)
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())
    crl = sign_crl(
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(NOW - dt.timedelta(minutes=5))
        .next_update(NOW + dt.timedelta(days=7))
        .add_revoked_certificate(entry)
        .add_extension(aki, critical=False)
        .add_extension(x509.CRLNumber(1), critical=False),
        ca,
        issuer=ca_cert,
    )
    assert crl.is_signature_valid(ca.public_key())

    ca_pem, crl_pem = _pem(tmp_path / "ca.pem", ca_cert), _pem(tmp_path / "crl.pem", crl)
    done = _openssl("crl", "-in", crl_pem, "-CAfile", ca_pem, "-noout")
    assert done.returncode == 0 and "verify OK" in done.stderr, done.stderr
    # openssl uses the CRL: the revoked device fails, the other passes.
    check = ("verify", "-crl_check", "-CRLfile", crl_pem, "-CAfile", ca_pem)
    bad = _openssl(*check, _pem(tmp_path / "revoked.pem", revoked))
    assert bad.returncode != 0 and "certificate revoked" in (bad.stdout + bad.stderr)
    good = _openssl(*check, _pem(tmp_path / "kept.pem", kept))
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("spec", [KeySpec.P384, KeySpec.RSA2048], ids=["p384", "rsa2048"])
def test_token_key_signs_its_own_csr(token: Pkcs11Token, tmp_path: Path, spec: KeySpec) -> None:
    """A factory with its key in a token asks the root for its intermediate by CSR."""
    key = token.generate_key(spec, label=_label())
    csr = sign_csr(x509.CertificateSigningRequestBuilder().subject_name(_name("factory-b")), key)
    assert csr.public_key() == key.public_key()
    assert csr.is_signature_valid
    done = _openssl("req", "-verify", "-noout", "-in", _pem(tmp_path / "f.csr", csr))
    assert done.returncode == 0 and "verify OK" in (done.stdout + done.stderr), done.stderr


def test_ecdsa_signatures_are_der_and_verify(token: Pkcs11Token) -> None:
    key = token.generate_key(KeySpec.P256, label=_label())
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for message in (b"", b"x", b"a longer message " * 100):
        signature = key.sign(message)
        assert signature[0] == 0x30  # ECDSA-Sig-Value, not PKCS#11's r || s
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


# -- finding keys ----------------------------------------------------------------------------


def test_keys_are_found_by_uri(config: Pkcs11Config, token: Pkcs11Token) -> None:
    label = _label()
    made = token.generate_key(KeySpec.P256, label=label, key_id=b"\x42\x43")
    for text in (
        f"pkcs11:object={label}",
        "pkcs11:id=%42%43",
        f"pkcs11:token=iotdps-ca;object={label};id=%42%43;type=private",
    ):
        found = token.find_key(parse_pkcs11_uri(text))
        assert isinstance(found, Pkcs11Signer)
        assert found.public_key() == made.public_key() and found.key_id == b"\x42\x43"
    assert str(made.uri) == f"pkcs11:token=iotdps-ca;object={label};id=%42%43;type=private"
    # The same key from another open of the token (the URI names the token).
    with Pkcs11Token.open(Pkcs11Config(config.module_path, config.pin), made.uri) as again:
        assert again.find_key(made.uri).public_key() == made.public_key()

    with pytest.raises(KeyNotFound, match="no private key with label 'absent' in PKCS#11 token 'iotdps-ca'"):
        token.find_key(parse_pkcs11_uri("pkcs11:object=absent"))
    with pytest.raises(InvalidInput, match="type=private"):
        token.find_key(parse_pkcs11_uri(f"pkcs11:object={label};type=public"))
    with pytest.raises(AlreadyExists, match=label):
        token.generate_key(KeySpec.P256, label=label)
    # Matched against the CA certificate's key where one is given.
    with pytest.raises(Pkcs11Error, match="does not match the expected public key"):
        token.find_key(made.uri, public_key=ec.generate_private_key(ec.SECP256R1()).public_key())


# -- failures: one clear error each ----------------------------------------------------------


def test_wrong_pin_is_one_error_naming_the_token(softhsm: tuple[SoftHsm, SoftHsmToken, SoftHsmToken]) -> None:
    _, main, spare = softhsm
    # Checked by the token itself (nobody is logged in to `spare`)...
    with pytest.raises(WrongPin) as err:
        Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret("not-the-pin"), spare.label))
    assert str(err.value) == "wrong PIN for PKCS#11 token 'spare'"
    # ...and while the token is already logged in, where the token would not check it again.
    with Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret(main.user_pin), main.label)):
        with pytest.raises(WrongPin) as err:
            Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret("not-the-pin"), main.label))
    assert str(err.value) == "wrong PIN for PKCS#11 token 'iotdps-ca'"
    assert main.user_pin not in str(err.value)
    # The right PIN still works afterwards.
    with Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret(spare.user_pin), spare.label)) as ok:
        assert ok.label == "spare"


def test_missing_token_module_and_key_are_clear_errors(config: Pkcs11Config, tmp_path: Path) -> None:
    with pytest.raises(TokenNotFound) as err:
        Pkcs11Token.open(config, parse_pkcs11_uri("pkcs11:token=line-9"))
    assert str(err.value) == (
        f"no PKCS#11 token labelled 'line-9' in {SOFTHSM_MODULE} (tokens present: 'iotdps-ca', 'spare')"
    )
    missing = tmp_path / "libvendor.so"
    with pytest.raises(ModuleNotFound, match=f"the PKCS#11 module {missing} does not exist"):
        Pkcs11Token.open(Pkcs11Config(missing, config.pin, "iotdps-ca"))
    not_a_module = tmp_path / "junk.so"
    not_a_module.write_bytes(b"not an ELF file")
    with pytest.raises(ModuleNotFound, match=r"cannot load .*junk\.so as a PKCS#11 module"):
        Pkcs11Token.open(Pkcs11Config(not_a_module, config.pin, "iotdps-ca"))
    with pytest.raises(InvalidInput, match="name the PKCS#11 token"):
        Pkcs11Token.open(Pkcs11Config(config.module_path, config.pin))
    # The URI's manufacturer/model must be the token's, whether or not it is already open.
    with Pkcs11Token.open(config, parse_pkcs11_uri("pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2")) as t:
        assert t.label == "iotdps-ca"
    wrong_maker = parse_pkcs11_uri("pkcs11:token=iotdps-ca;manufacturer=Acme")
    message = "PKCS#11 token 'iotdps-ca' does not match the URI's manufacturer='Acme' (it has 'SoftHSM project')"
    with pytest.raises(TokenNotFound) as err:
        Pkcs11Token.open(config, wrong_maker)
    assert str(err.value) == message
    with Pkcs11Token.open(config), pytest.raises(TokenNotFound) as err:
        Pkcs11Token.open(config, wrong_maker)
    assert str(err.value) == message


def test_closing_one_open_keeps_the_others_logged_in(config: Pkcs11Config) -> None:
    """PKCS#11 logs out every session of a token when one logs out; ours share one login."""
    first = Pkcs11Token.open(config)
    key = first.generate_key(KeySpec.P256, label=_label())
    with Pkcs11Token.open(config) as second:
        assert second.find_key(key.uri).public_key() == key.public_key()
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(key.sign(b"still logged in"), b"still logged in", ec.ECDSA(hashes.SHA256()))
    first.close()
    with pytest.raises(Pkcs11Error, match="was closed"):
        key.sign(b"after close")
    with pytest.raises(Pkcs11Error, match="was closed"):
        first.find_key(key.uri)


_FORKED_KEY: Pkcs11Signer | None = None


def _sign_in_child() -> str:
    assert _FORKED_KEY is not None
    try:
        _FORKED_KEY.sign(b"from a forked worker")
    except Pkcs11Error as exc:
        return str(exc)
    return "signed"


def _open_and_sign_in_child(config: Pkcs11Config, uri: str) -> bytes:
    with Pkcs11Token.open(config) as token:
        return token.find_key(parse_pkcs11_uri(uri)).sign(b"from a forked worker")


def test_a_forked_process_must_open_its_own_session(config: Pkcs11Config, token: Pkcs11Token) -> None:
    """A bulk-minting worker forked from the parent cannot use the parent's session, and can
    open its own (the module is initialised again in the child)."""
    global _FORKED_KEY
    _FORKED_KEY = key = token.generate_key(KeySpec.P256, label=_label())
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            answer = pool.apply(_sign_in_child)
            signature = pool.apply(_open_and_sign_in_child, (config, str(key.uri)))
    finally:
        _FORKED_KEY = None
    assert answer == "PKCS#11 token 'iotdps-ca' was opened before fork(); open it in this process"
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"from a forked worker", ec.ECDSA(hashes.SHA256()))
    key.sign(b"the parent's session still works")


# -- custody: what the token refuses ---------------------------------------------------------


def _raw_session(config: Pkcs11Config) -> pkcs11.Session:
    """A python-pkcs11 session of our own, so the refusals below come from the token and not
    from iotdps's code (no iotdps session may be open: they share the token's login)."""
    lib = pkcs11.lib(str(config.module_path))
    return lib.get_token(token_label=config.token_label).open(rw=True, user_pin=config.pin.reveal())


def test_generated_key_cannot_be_exported(config: Pkcs11Config) -> None:
    label = _label()
    with Pkcs11Token.open(config) as token:
        key = token.generate_key(KeySpec.P256, label=label)
        assert key.custody() == "generated in the token, never extractable"
    with _raw_session(config) as session:
        private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label=label)
        assert private[pkcs11.Attribute.SENSITIVE] is True
        assert private[pkcs11.Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.AttributeSensitive):
            private[pkcs11.Attribute.VALUE]  # the private scalar
        wrapping = session.generate_key(pkcs11.KeyType.AES, 256, template={pkcs11.Attribute.WRAP: True})
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapping.wrap_key(private, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(pkcs11.PKCS11Error):  # once non-extractable, always (PKCS#11 4.4)
            private[pkcs11.Attribute.EXTRACTABLE] = True
        assert private[pkcs11.Attribute.EXTRACTABLE] is False


def test_imported_key_signs_and_is_then_sensitive(config: Pkcs11Config, tmp_path: Path) -> None:
    label = _label()
    for spec in (KeySpec.P256, KeySpec.RSA2048):
        file_key = generate_private_key(spec)
        with Pkcs11Token.open(config) as token:
            key = token.import_key(file_key, label=f"{label}-{spec.value}")
            assert key.public_key() == file_key.public_key()
            assert key.custody() == "imported, now sensitive and non-extractable"
            cert = _self_signed_ca(key, f"Imported {spec.value}")
            # The same certificate signed in software verifies the same way: one algorithm.
            assert cert.signature_algorithm_oid == SoftwareSigner(file_key).algorithm.oid
            cert.verify_directly_issued_by(cert)
            assert _openssl("verify", "-CAfile", _pem(tmp_path / "c.pem", cert), tmp_path / "c.pem").returncode == 0
            with pytest.raises(AlreadyExists):  # imported once
                token.import_key(file_key, label=f"{label}-{spec.value}")
        with _raw_session(config) as session:
            private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label=f"{label}-{spec.value}")
            attribute = pkcs11.Attribute.VALUE if spec is KeySpec.P256 else pkcs11.Attribute.PRIVATE_EXPONENT
            with pytest.raises(pkcs11.AttributeSensitive):
                private[attribute]


# -- the software signer and the DER assembly ------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=[s.value for s in SPECS])
def test_software_signer_matches_cryptography(spec: KeySpec, tmp_path: Path) -> None:
    key = generate_private_key(spec)
    signer = SoftwareSigner(key)
    assert isinstance(signer, Signer)
    # One AlgorithmIdentifier encoder: the bulk template's and ours agree byte for byte.
    assert signer.algorithm.identifier_der == _sig_alg(key)
    pub = key.public_key()
    # The to-be-signed bytes are exactly those cryptography signs with the key itself.
    builder = _ca_builder("Software", pub, None, pub)
    cert = sign_certificate(builder, signer)
    assert cert.tbs_certificate_bytes == builder.sign(key, signer.algorithm.hash()).tbs_certificate_bytes
    crl_builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    crl = sign_crl(crl_builder, signer)
    assert crl.tbs_certlist_bytes == crl_builder.sign(key, signer.algorithm.hash()).tbs_certlist_bytes
    csr_builder = x509.CertificateSigningRequestBuilder().subject_name(_name("Software"))
    csr = sign_csr(csr_builder, signer)
    assert csr.tbs_certrequest_bytes == csr_builder.sign(key, signer.algorithm.hash()).tbs_certrequest_bytes
    assert _openssl("verify", "-CAfile", _pem(tmp_path / "s.pem", cert), tmp_path / "s.pem").returncode == 0


class _LyingSigner:
    """Claims one public key and signs with another: the mistake a wrong URI makes."""

    def __init__(self) -> None:
        self._real = SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))
        self._claimed = ec.generate_private_key(ec.SECP256R1()).public_key()
        self.algorithm = self._real.algorithm

    def public_key(self) -> SignerPublicKey:
        return self._claimed

    def sign(self, data: bytes) -> bytes:
        return self._real.sign(data)


def test_a_signature_that_does_not_verify_is_refused() -> None:
    with pytest.raises(PkiError, match="does not verify"):
        _self_signed_ca(_LyingSigner(), "Liar")


def test_rsa_signer_refuses_small_keys() -> None:
    with pytest.raises(InvalidInput, match="at least 2048"):
        SoftwareSigner(rsa.generate_private_key(65537, 1024))  # noqa: S505 - the point
