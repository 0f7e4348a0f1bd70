"""LocalIssuer with a CA key in a real SoftHSM2 token: the HSM path of the issuing seam.

SoftHSM reads its configuration once per process, and test_pkcs11.py owns this process's
token; so the issuance runs in a child Python with a token of its own, and the parent judges
the chain it prints with `openssl verify`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from iotdps.pki import load_certificates
from iotdps_testing.issuance import openssl_verify

TESTS = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from iotdps.pki import Issuer, KeySpec, Validity, create_intermediate_ca, create_root_ca, generate_private_key
    from iotdps.pki.csr_policy import IssuanceProfile, vet_csr
    from iotdps.pki.issuing import LocalIssuer
    from iotdps.pki.pkcs11 import Pkcs11Token
    from iotdps.pki.pkcs11_uri import Pkcs11Config
    from iotdps.secret import Secret
    from iotdps_testing.issuance import make_csr
    from iotdps_testing.softhsm import SOFTHSM_MODULE, start_softhsm

    hsm = start_softhsm(Path(sys.argv[1]))
    token = hsm.init_token("issuing", user_pin="issuing-pin-1234")
    root_key = generate_private_key()
    root = Issuer(create_root_ca("HSM Test Root", root_key, Validity.days(30)), root_key)
    with Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret(token.user_pin), token.label)) as opened:
        signer = opened.generate_key(KeySpec.P384, label="issuing-ca")
        ca = create_intermediate_ca(root, "HSM Issuing CA", signer.public_key(), Validity.days(20))
        issuer = LocalIssuer.with_signer("hsm-ca", signer, (ca, root.certificate))
        chain = asyncio.run(issuer.issue(vet_csr(make_csr("dev-hsm"), "dev-hsm"), IssuanceProfile(7)))
    sys.stdout.write(chain.chain_pem().decode())
    """
)


def test_an_hsm_key_issues_a_chain_openssl_accepts(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("SOFTHSM2_CONF", None)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "softhsm")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    leaf, ca, root = load_certificates(done.stdout)
    assert leaf.subject.rfc4514_string() == "CN=dev-hsm"
    assert leaf.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.3"  # ecdsa-with-SHA384: the token's P-384
    result = openssl_verify(tmp_path, [leaf, ca], [root])
    assert result.returncode == 0, result.stderr
