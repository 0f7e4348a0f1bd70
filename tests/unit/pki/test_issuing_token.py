"""TokenIssuer: the issuing CA whose key is in a PKCS#11 token, against a real SoftHSM2 token.

SoftHSM reads its configuration once per process and test_pkcs11.py owns this process's token,
so the token cases run in a child Python with a token of its own; it prints one JSON document
of what happened and the parent judges it (and the chains, with `openssl verify`). The cases
that never reach a module (no configuration, a module path that is not there) run here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iotdps.pki import Issuer, Validity, create_root_ca, generate_private_key, load_certificates
from iotdps.pki.csr_policy import IssuanceProfile, vet_csr
from iotdps.pki.issuing import IssuanceError, IssuanceFailure
from iotdps.pki.issuing.token import TokenIssuer
from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Uri
from iotdps.secret import Secret
from iotdps_testing.issuance import make_csr, openssl_verify

TESTS = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from iotdps.pki import Issuer, KeySpec, Validity, create_intermediate_ca, create_root_ca, generate_private_key
    from iotdps.pki.csr_policy import IssuanceProfile, vet_csr
    from iotdps.pki.issuing import IssuanceError
    from iotdps.pki.issuing.token import TokenIssuer
    from iotdps.pki.pkcs11 import Pkcs11Token
    from iotdps.pki.pkcs11_uri import Pkcs11Config, Pkcs11Uri
    from iotdps.secret import Secret
    from iotdps_testing.issuance import make_csr
    from iotdps_testing.softhsm import SOFTHSM_MODULE, start_softhsm

    hsm = start_softhsm(Path(sys.argv[1]))
    token = hsm.init_token("issuing", user_pin="issuing-pin-1234")
    good = Pkcs11Config(SOFTHSM_MODULE, Secret(token.user_pin), token.label)
    root_key = generate_private_key()
    root = Issuer(create_root_ca("Token Issuer Root", root_key, Validity.days(30)), root_key)
    with Pkcs11Token.open(good) as opened:
        ca_key = opened.generate_key(KeySpec.P256, label="issuing-ca").public_key()
        other_key = opened.generate_key(KeySpec.P256, label="other-key").public_key()
    ca = create_intermediate_ca(root, "Token Issuing CA", ca_key, Validity.days(20))
    chain = (ca, root.certificate)
    pin = ["wrong-pin"]  # what the service's PIN file says, read at every login attempt
    out = {}

    def config():
        return Pkcs11Config(SOFTHSM_MODULE, Secret(pin[0]), token.label)

    def csr(rid):
        return vet_csr(make_csr(rid), rid)

    async def attempt(issuer, rid):
        try:
            return (await issuer.issue(csr(rid), IssuanceProfile(7))).chain_pem().decode()
        except IssuanceError as exc:
            return {"reason": exc.reason.value, "message": str(exc)}

    async def main():
        issuer = TokenIssuer("tok-ca", Pkcs11Uri(object="issuing-ca"), chain, config)
        out["wrong_pin"] = await attempt(issuer, "dev-1")
        pin[0] = token.user_pin  # fixed: the next attempt logs in
        out["fixed"] = await attempt(issuer, "dev-1")
        first = issuer._open[0]
        # Eight at once share the one session (pkcs11 serialises them), signed off the loop.
        out["concurrent"] = await asyncio.gather(*(attempt(issuer, f"dev-c{i}") for i in range(8)))
        out["same_session"] = issuer._open[0] is first
        first.close()  # the session dies under the issuer, as when the token is unplugged
        out["dead_session"] = await attempt(issuer, "dev-d1")
        out["relogged"] = await attempt(issuer, "dev-d2")
        out["new_session"] = issuer._open is not None and issuer._open[0] is not first
        await issuer.close()
        out["closed"] = issuer._open is None
        absent = TokenIssuer("tok-ca", Pkcs11Uri(token="no-such-token", object="issuing-ca"), chain, config)
        out["no_token"] = await attempt(absent, "dev-2")
        no_key = TokenIssuer("tok-ca", Pkcs11Uri(object="gone"), chain, config)
        out["no_key"] = await attempt(no_key, "dev-3")
        mismatch = TokenIssuer("tok-ca", Pkcs11Uri(object="other-key"), chain, config)
        out["mismatch"] = await attempt(mismatch, "dev-4")
        out["check_uri"] = str(TokenIssuer("tok-ca", Pkcs11Uri(object="issuing-ca"), chain, config).check())

    asyncio.run(main())
    print(json.dumps(out))
    """
)


def test_token_issuer_logs_in_once_and_refuses_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("SOFTHSM2_CONF", None)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "softhsm")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["wrong_pin"]["reason"] == "CA_REFUSED"
    assert "wrong PIN for PKCS#11 token 'issuing'" in out["wrong_pin"]["message"]
    assert not any(pin in json.dumps(out) for pin in ("wrong-pin", "issuing-pin-1234"))
    leaf, ca, root = load_certificates(out["fixed"])
    assert leaf.subject.rfc4514_string() == "CN=dev-1"
    verdict = openssl_verify(tmp_path, [leaf, ca], [root])
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    serials = {load_certificates(pem)[0].serial_number for pem in out["concurrent"]}
    assert len(serials) == 8 and out["same_session"] and out["closed"]
    assert out["dead_session"]["reason"] == "CA_UNREACHABLE" and "was closed" in out["dead_session"]["message"]
    assert load_certificates(out["relogged"])[0].subject.rfc4514_string() == "CN=dev-d2" and out["new_session"]
    assert out["no_token"]["reason"] == "CA_UNREACHABLE"
    assert "no PKCS#11 token labelled 'no-such-token'" in out["no_token"]["message"]
    assert (
        out["no_key"]["reason"] == "CA_UNREACHABLE" and "no private key with label 'gone'" in out["no_key"]["message"]
    )
    assert out["mismatch"]["reason"] == "CA_REFUSED"
    assert "does not match" in out["mismatch"]["message"]
    assert out["check_uri"].startswith("pkcs11:token=issuing;object=issuing-ca;id=")
    assert out["check_uri"].endswith(";type=private")


@pytest.fixture(scope="module")
def root() -> Issuer:
    key = generate_private_key()
    return Issuer(create_root_ca("Unconfigured Token Root", key, Validity.days(5)), key)


def _failure(issuer: TokenIssuer) -> IssuanceError:
    with pytest.raises(IssuanceError) as caught:
        asyncio.run(issuer.issue(vet_csr(make_csr("dev-x"), "dev-x"), IssuanceProfile(7)))
    return caught.value


def test_no_configuration_or_no_module_is_unreachable_not_a_traceback(root: Issuer, tmp_path: Path) -> None:
    def unconfigured() -> Pkcs11Config:
        return Pkcs11Config.from_env({})

    err = _failure(TokenIssuer("tok-ca", Pkcs11Uri(object="ca"), (root.certificate,), unconfigured))
    assert err.reason is IssuanceFailure.CA_UNREACHABLE and "set IOTDPS_PKCS11_MODULE" in str(err)
    missing = tmp_path / "no-module.so"

    def no_module() -> Pkcs11Config:
        return Pkcs11Config(missing, Secret("1234"), "ca")

    err = _failure(TokenIssuer("tok-ca", Pkcs11Uri(object="ca"), (root.certificate,), no_module))
    assert err.reason is IssuanceFailure.CA_UNREACHABLE and f"the PKCS#11 module {missing} does not exist" in str(err)
    assert "1234" not in str(err)


def test_a_uri_carrying_a_pin_or_a_module_is_refused_at_construction(root: Issuer) -> None:
    from iotdps.errors import InvalidInput
    from iotdps.pki.pkcs11_uri import parse_pkcs11_uri

    for text in ("pkcs11:object=ca?pin-value=1234", "pkcs11:object=ca?module-path=/tmp/x.so"):
        with pytest.raises(InvalidInput, match="iotdps takes it only from"):
            TokenIssuer("tok-ca", parse_pkcs11_uri(text), (root.certificate,))
